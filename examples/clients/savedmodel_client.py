"""Classify images with an `imgcls export --format savedmodel` folder, using only TensorFlow and Pillow.

pip install tensorflow pillow
python examples/clients/savedmodel_client.py pets-savedmodel photo.jpg
"""

import tensorflow as tf
from imgcls_client import main


def run(folder, spec, pixels):
    model = tf.saved_model.load(str(folder / spec["file"]))
    return model.serve(tf.constant(pixels)).numpy()


if __name__ == "__main__":
    main(run)
