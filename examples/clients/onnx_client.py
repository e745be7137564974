"""Classify images with an `imgcls export --format onnx` folder, using only ONNX Runtime and Pillow.

pip install onnxruntime pillow
python examples/clients/onnx_client.py pets-onnx photo.jpg
"""

import onnxruntime as ort
from imgcls_client import main


def run(folder, spec, pixels):
    session = ort.InferenceSession(str(folder / spec["file"]), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: pixels})[0]


if __name__ == "__main__":
    main(run)
