"""Classify images with an `imgcls export --format litert` folder, using only LiteRT and Pillow.

pip install ai-edge-litert pillow
python examples/clients/litert_client.py pets-litert photo.jpg
"""

from ai_edge_litert.interpreter import Interpreter
from imgcls_client import main


def run(folder, spec, pixels):
    interpreter = Interpreter(model_path=str(folder / spec["file"]))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], pixels.shape)  # the batch is dynamic
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], pixels)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


if __name__ == "__main__":
    main(run)
