"""The original's approach, as a baseline: a Flask endpoint that loads the Keras model per request.

    python -m benchmarks.original_flask --model path/to/model.keras [--port 0]

POST /predict with the image as the `file` form field; answers the class probabilities as JSON.
Prints `listening on http://HOST:PORT` once it accepts requests. Needs the `bench` extra.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image
from werkzeug.serving import make_server


def create_app(model_path: str) -> Flask:
    app = Flask(__name__)

    @app.post("/predict")
    def predict():  # type: ignore[no-untyped-def]
        import keras

        model = keras.models.load_model(model_path, compile=False)   # per request, as the original did
        image = Image.open(io.BytesIO(request.files["file"].read())).convert("RGB").resize((224, 224))
        batch = (np.asarray(image, dtype=np.float32) / 127.5 - 1.0)[None]
        outputs = model.predict(batch, verbose=0)
        probabilities = outputs[0] if isinstance(outputs, list) else outputs
        return jsonify({"probabilities": np.asarray(probabilities)[0].tolist()})

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, create_app(args.model), threaded=True)
    print(f"listening on http://{args.host}:{server.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
