"""A user's model file: a 512-512-256 MLP in tf-keras, as ``training.model`` takes it.

``make bench-serve`` serves it from its ONNX graph next to the default model, and the
ONNX tests export and serve it; both read this file.
"""

import tf_keras as keras

framework = "tensorflow"


def build_model(n_features):
    features = keras.Input(shape=(n_features,), name="features")
    x = keras.layers.Dense(512, activation="relu")(features)
    x = keras.layers.Dense(512, activation="relu")(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.Model(features, keras.layers.Dense(1, activation="sigmoid")(x))
