"""Build-time check of an installed Dr.Tech package: fail the image build, not the pod.

Run from outside the source tree (`cd / && python /src/deploy/docker/check_image.py`) so it sees the
installed package, not the checkout. Checks that the generated gRPC code was packaged and that every
model service's shipped model files (services/registry.py) are present.
"""

from __future__ import annotations

import importlib
import sys

from services.registry import AUTO, model_specs


def main() -> int:
    importlib.import_module("protos.drtech.v1.auth_pb2_grpc")
    importlib.import_module("protos.drtech.v1.diagnosis_pb2_grpc")
    specs = model_specs()
    if not any(spec.exam_type == AUTO for spec in specs.values()) or len(specs) < 2:
        print(f"the image holds model services {sorted(specs)}: the router and a model at least are needed",
              file=sys.stderr)
        return 1
    missing = []
    for task, spec in specs.items():
        if "site-packages" not in str(spec.model_dir):
            print(
                f"services.{task} was imported from {spec.model_dir}, not the installed package",
                file=sys.stderr,
            )
            return 1
        missing += [str(path) for path in (spec.model_path, spec.card_path) if not path.is_file()]
    if missing:
        print("shipped model files missing from the image: " + ", ".join(missing), file=sys.stderr)
        return 1
    print("image check ok: generated gRPC code and model files for " + ", ".join(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
