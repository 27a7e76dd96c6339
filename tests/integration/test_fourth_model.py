"""A fourth model is one folder: a copy of services/pneumonia (with its model/ folder) under a new
name and exam type, in a temporary tree beside the shipped ones, is listed, routed and diagnosed by
the whole platform (tests/web_stack.py) with no other file changed: the gateway and the UI learn the
new exam type from the service itself (GetModelInfo), the stack from the registry of the tree."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.registry import SERVICES_DIR, model_specs
from tests.integration.test_gateway_api import PASSWORD, bearer, sign_up, upload
from tests.support import sample_image_bytes
from tests.unit.test_registry import copy_model_folder
from tests.web_stack import Stack, running_stack

NEW_TASK, NEW_EXAM_TYPE = "lungs", "lung_xray"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model folders (linked) and `lungs`: services/pneumonia copied, model/ included."""
    root = tmp_path_factory.mktemp("tree") / "services"
    root.mkdir()
    for task in model_specs():
        (root / task).symlink_to(SERVICES_DIR / task, target_is_directory=True)
    copy_model_folder(root, "pneumonia", NEW_TASK, NEW_EXAM_TYPE, port=50056)
    if (SERVICES_DIR / "pneumonia" / "model").is_dir():
        shutil.copytree(SERVICES_DIR / "pneumonia" / "model", root / NEW_TASK / "model")
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tree: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("models"),
                       models_dir=tree, services_dir=tree) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


def test_the_copied_folder_is_a_fourth_model_service_of_the_stack(stack: Stack) -> None:
    assert list(stack.models) == ["bone_xray", "skin_lesion", "chest_xray", "auto", NEW_EXAM_TYPE]
    assert stack.models[NEW_EXAM_TYPE].spec.task == NEW_TASK


def test_the_new_model_is_listed_with_its_card_and_plots(client: httpx.Client) -> None:
    cards = client.get("/api/v1/models").json()
    assert [card["exam_type"] for card in cards][-1] == "auto"     # the router's card stays last
    new = next(card for card in cards if card["exam_type"] == NEW_EXAM_TYPE)
    assert new["task"] == NEW_TASK and new["exam_display_name"] == "Chest X-ray"   # copied as it was
    assert [label["code"] for label in new["labels"]] == ["NORMAL", "PNEUMONIA"]
    shipped_plots = sorted(path.name for path in (SERVICES_DIR / "pneumonia" / "model").glob("*.png"))
    assert new["plots"] == [f"/api/v1/models/{NEW_TASK}/plots/{name}" for name in shipped_plots]
    if shipped_plots:
        assert client.get(new["plots"][0]).headers["content-type"] == "image/png"
    ready = client.get("/readyz").json()
    assert ready["services"][NEW_TASK] == "SERVING"
    # The upload form offers it, as the service names it, once the gateway has heard of it.
    account = sign_up(client)
    assert client.post("/api/v1/auth/login", json={"email": account["email"], "password": PASSWORD}).is_success
    form = client.get("/app").text
    client.cookies.clear()
    assert f'id="exam-{NEW_EXAM_TYPE}"' in form


def test_an_upload_for_the_new_exam_type_is_routed_to_it_and_diagnosed(
    client: httpx.Client, stack: Stack
) -> None:
    headers = bearer(client)
    reply = upload(client, headers, sample_image_bytes("chest_xray"), NEW_EXAM_TYPE)
    assert reply.status_code == 201, reply.text
    diagnosis = reply.json()
    assert diagnosis["status"] == "completed" and diagnosis["exam_type"] == NEW_EXAM_TYPE
    assert diagnosis["label"] in {"NORMAL", "PNEUMONIA"}
    history = client.get("/api/v1/diagnoses", params={"exam_type": NEW_EXAM_TYPE}, headers=headers).json()
    assert [item["id"] for item in history["items"]] == [diagnosis["id"]]

    # Its own service answered, not the one it was copied from: with that one stopped, the new exam
    # type is still diagnosed while chest_xray uploads become failed records to retry.
    stack.models["chest_xray"].stop(grace=0)
    again = upload(client, headers, sample_image_bytes("chest_xray"), NEW_EXAM_TYPE)
    assert again.status_code == 201 and again.json()["status"] == "completed", again.text
    chest = upload(client, headers, sample_image_bytes("chest_xray"), "chest_xray")
    assert chest.status_code == 201 and chest.json()["status"] == "failed", chest.text


def test_an_exam_type_no_service_serves_is_refused_naming_those_served(client: httpx.Client) -> None:
    reply = upload(client, bearer(client), sample_image_bytes("chest_xray"), "brain_mri")
    assert reply.status_code == 422
    assert reply.json()["errors"]["exam_type"] == (
        "Input should be one of: bone_xray, skin_lesion, chest_xray, lung_xray, auto."
    )

