"""What decoding the largest accepted uploads costs in memory, the way a model service decodes them.

    python -m benchmarks.decode_memory [--threads 8] [--rounds 2] [--side 8000]

Builds a JPEG-baseline colour DICOM of side x side pixels (about 1 MB at 8000: 64 M pixels, the
largest accepted) and has `--threads` threads (a model service's gRPC workers) each decode it
`--rounds` times with Diagnose's own steps (inspect_image, decode, to_model_input). Three variants,
each in a fresh process so peak RSS is its own: no budget (every thread decodes at once), the pixel
budget alone (services/core/pixel_budget.py, one image of this size at a time), and the budget with
free memory given back after each image (services/core/memory.py). Prints one JSON line per variant:
peak and final resident MiB. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

VARIANTS = ("no budget", "budget", "budget + release")


def colour_dicom(side: int) -> bytes:
    from PIL import Image

    from tests.unit.test_imaging import make_colour_dicom

    return make_colour_dicom(Image.new("RGB", (side, side), (120, 60, 30)))


def _resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def run_variant(variant: str, path: Path, threads: int, rounds: int) -> dict:
    from services.core.imaging import decode, inspect_image
    from services.core.memory import release_after
    from services.core.pixel_budget import PixelBudget
    from services.core.preprocessing import to_model_input
    from services.core.settings import ServingSettings

    data = path.read_bytes()
    budget = PixelBudget(ServingSettings().max_decoding_pixels if variant != "no budget" else 10**15)

    def worker() -> None:
        for _ in range(rounds):
            header = inspect_image(data)
            pixels = header.width * header.height
            with budget.hold(pixels):
                decoded = decode(header, draft_size=(448, 448))
                to_model_input(decoded.image, (224, 224))
                del decoded
                if variant == "budget + release":
                    release_after(pixels)

    started = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return {"variant": variant, "threads": threads, "rounds": rounds, "dicom_bytes": len(data),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "resident_after_mib": round(_resident_mib())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8, help="decoding threads (a service's worker_threads)")
    parser.add_argument("--rounds", type=int, default=2, help="images each thread decodes")
    parser.add_argument("--side", type=int, default=8000, help="image side in pixels")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)   # one variant, in this process
    parser.add_argument("--dicom", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.dicom, args.threads, args.rounds)), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.dcm"
        path.write_bytes(colour_dicom(args.side))
        for variant in VARIANTS:
            subprocess.run([sys.executable, "-m", "benchmarks.decode_memory", "--variant", variant,
                            "--dicom", str(path), "--threads", str(args.threads), "--rounds", str(args.rounds)],
                           check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
