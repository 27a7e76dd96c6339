"""How many pages of text the shipped router lets through as one of the three kinds.

    python -m benchmarks.router_text_pages [--pages 100] [--first-seed 5]

The router card's out-of-distribution set holds five text pages (training.router._text_image,
seeds 0-4). This draws more from the same generator, sends each as a JPEG through the router
service's own servicer (serving decoding and model), and applies the gateway's decision
(gateway.auto_routing.decide). Prints one JSON line: pages, accepted, and the accepted pages' seeds,
labels and ood_ratio. Not a test: it measures the model.
"""

from __future__ import annotations

import argparse
import io
import json

from gateway.auto_routing import decide
from gateway.serialization import struct_to_dict
from protos.drtech.v1 import diagnosis_pb2
from services.core.service import DiagnosisServicer, load_model
from services.core.settings import ServingSettings
from services.registry import diagnosis_specs
from services.router.spec import SPEC
from training.router import _text_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.router_text_pages",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=5, help="seeds 0-4 are the card's own pages")
    args = parser.parse_args(argv)
    settings = ServingSettings(model_workers=1, warmup_runs=1)
    servicer = DiagnosisServicer(SPEC, settings)
    servicer.set_model(load_model(SPEC, settings))
    accepted = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.pages):
            buffer = io.BytesIO()
            _text_image(seed).save(buffer, format="JPEG", quality=90)
            reply = servicer.Diagnose(diagnosis_pb2.DiagnoseRequest(image=buffer.getvalue()), None)
            ratio = struct_to_dict(reply.extra)["ood_ratio"][0]
            if decide(reply.label, ratio, [spec.exam_type for spec in diagnosis_specs().values()]) is not None:
                accepted.append({"seed": seed, "label": reply.label, "ood_ratio": round(ratio, 3)})
    finally:
        servicer.close()
    print(json.dumps({"pages": args.pages, "accepted": len(accepted), "accepted_pages": accepted}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
