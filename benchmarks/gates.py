"""How often the shipped models refuse what they cannot read, and how often they refuse what they can.

    python -m benchmarks.gates [--per-family 30] [--other 50] [--genuine 200] [--data DIR]

Every image goes through the model services' own servicers (serving decoding, the shipped
model.onnx with its gate, services.core.service.check_gate), as an upload would:

- chosen type: each of pneumonia (chest_xray), skin (skin_lesion) and bone (bone_xray) gets the
  held-out outside images (training/outside_images.py, `measure` split: seeds, fonts, photos and
  scans the gates were not fitted on, and whole families they never saw: charts, receipts) and
  the other two tasks' genuine test images (split.csv test rows); a refusal is WrongKindOfImage.
- auto: the router (gateway.auto_routing.decide on its label and ood_ratio), then the routed
  model's gate; refused when either refuses.
- genuine: each model's split.csv test rows (never used to fit or to set a threshold) sent as
  their own exam type, and through auto (a wrong route counts apart from a refusal).

Prints a table per task and family and writes benchmarks/results/gates-<UTC time>.{md,json}.
Not a test: it measures the shipped models (a few minutes on 2 cores; skin runs 8 views per image).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from gateway.auto_routing import decide
from gateway.serialization import struct_to_dict
from protos.drtech.v1 import diagnosis_pb2
from services.core.errors import WrongKindOfImage
from services.core.service import DiagnosisServicer, load_model
from services.core.settings import ServingSettings
from services.registry import diagnosis_specs, model_specs
from training import outside_images
from training.gate import genuine_rows
from training.paths import PROJECT_ROOT, data_dir

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
TASK_OF = {spec.exam_type: task for task, spec in diagnosis_specs().items()}


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=30, help="outside images per family (measure split)")
    parser.add_argument("--other", type=int, default=50, help="genuine test images of each other task")
    parser.add_argument("--genuine", type=int, default=200, help="genuine test images per task")
    parser.add_argument("--data", help="dataset root (default DRTECH_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    started = time.monotonic()

    settings = ServingSettings(model_workers=1, warmup_runs=1)
    servicers: dict[str, DiagnosisServicer] = {}
    for task, spec in model_specs().items():
        servicers[task] = DiagnosisServicer(spec, settings)
        servicers[task].set_model(load_model(spec, settings))

    # Each (task, image) is run once: the auto path reuses the chosen-type answers.
    answers: dict[tuple[str, str], object] = {}

    def ask(task: str, key: str, data: Callable[[], bytes]) -> object:
        """The reply, or the string "refused" when the gate refuses."""
        if (task, key) not in answers:
            request = diagnosis_pb2.DiagnoseRequest(image=data())
            try:
                answers[(task, key)] = servicers[task].Diagnose(request, None)
            except WrongKindOfImage:
                answers[(task, key)] = "refused"
        return answers[(task, key)]

    def auto(key: str, data: Callable[[], bytes]) -> str:
        """"refused", or the exam type the upload was diagnosed as."""
        reply = ask("router", key, data)
        ratio = struct_to_dict(reply.extra)["ood_ratio"][0]
        routed = decide(reply.label, ratio, TASK_OF)
        if routed is None:
            return "refused"
        return "refused" if ask(TASK_OF[routed], key, data) == "refused" else routed

    images: list[tuple[str, str, Callable[[], bytes]]] = []        # (family, key, bytes)
    for family in outside_images.families("measure"):
        for index in range(args.per_family):
            images.append((family, f"{family}/{index}",
                           lambda f=family, i=index: png(outside_images.make(f, "measure", i))))
    genuine: dict[str, list[tuple[str, Callable[[], bytes]]]] = {}
    for task in TASK_OF.values():
        paths = genuine_rows(task, root, "test", max(args.genuine, args.other))
        genuine[task] = [(str(path), lambda p=path: Path(p).read_bytes()) for path in paths]

    refused: dict[str, dict[str, list[int]]] = defaultdict(dict)   # path -> family -> [refused, n]
    for exam_type, task in TASK_OF.items():
        rows = [(family, key, data) for family, key, data in images]
        rows += [(f"wrong:{other}", key, data) for other in TASK_OF.values() if other != task
                 for key, data in genuine[other][:args.other]]
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for family, key, data in rows:
            counts[family][0] += ask(task, key, data) == "refused"
            counts[family][1] += 1
        refused[exam_type] = dict(counts)
    auto_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for family, key, data in images:
        auto_counts[family][0] += auto(key, data) == "refused"
        auto_counts[family][1] += 1
    refused["auto"] = dict(auto_counts)

    false_refusals: dict[str, dict[str, int]] = {}
    for exam_type, task in TASK_OF.items():
        rows = genuine[task][:args.genuine]
        chosen = sum(ask(task, key, data) == "refused" for key, data in rows)
        routes = [auto(key, data) for key, data in rows]
        false_refusals[exam_type] = {"n": len(rows), "chosen": chosen, "auto_refused": routes.count("refused"),
                                     "auto_wrong_route": sum(r not in ("refused", exam_type) for r in routes)}
    for servicer in servicers.values():
        servicer.close()

    lines = ["# Gates: refusals of images the models do not read", "",
             (f"Measure split, {args.per_family} per family; {args.other} genuine test images of each other "
             f"task; {args.genuine} genuine test images per task. {time.monotonic() - started:.0f} s."), "",
             "| family | " + " | ".join(refused) + " |", "|---|" + "---|" * len(refused)]
    families = list(dict.fromkeys(f for counts in refused.values() for f in counts))
    for family in families:
        cells = [f"{100 * c[0] / c[1]:.1f}% of {c[1]}" if (c := refused[path].get(family)) else "-" for path in refused]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    totals = {path: [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]
              for path, counts in refused.items()}
    lines.append("| **all outside** | " + " | ".join(f"**{100 * r / n:.1f}%** of {n}" for r, n in totals.values()) + " |")
    lines += ["", "| genuine test images | refused as chosen type | refused by auto | auto routed elsewhere |",
              "|---|---|---|---|"]
    for exam_type, f in false_refusals.items():
        lines.append(f"| {exam_type} ({f['n']}) | {100 * f['chosen'] / f['n']:.1f}% | "
                     f"{100 * f['auto_refused'] / f['n']:.1f}% | {100 * f['auto_wrong_route'] / f['n']:.1f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"gates-{stamp}.md").write_text(text, encoding="utf-8")
    (RESULTS / f"gates-{stamp}.json").write_text(json.dumps(
        {"args": vars(args), "outside_refused": refused, "outside_totals": totals, "genuine": false_refusals},
        indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
