"""``bin/predict --overlays``: OUT/overlays/<ImageId>.png, the radiograph with its mask."""
from __future__ import annotations

from keras_ptx.fileio import join
from keras_ptx.inference import plots
from keras_ptx.inference.prediction import ModelIdentity, Prediction
from keras_ptx.results.writers import Writer
from keras_ptx.tf_setup import tf

OVERLAYS = "overlays"


class OverlayPngs(Writer):
    def open(self, out: str, identity: ModelIdentity) -> None:
        self.folder = join(out, OVERLAYS)
        tf.io.gfile.makedirs(self.folder)

    def write(self, prediction: Prediction) -> None:
        caption = f"p={prediction.probability:.2f} area={prediction.area}px"
        plots.save_png(join(self.folder, f"{plots.safe_filename(prediction.image.image_id)}.png"),
                       plots.overlay(prediction.image.pixels, prediction.mask, caption=caption))
