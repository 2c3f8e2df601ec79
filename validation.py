"""Validation during training: held-out images scored inside their FOV as evaluate.py scores
them, written to TensorBoard, and the best step's weights kept in the run folder."""

import os
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import dataset
import inference
import metrics
import run_folder
import scale

if TYPE_CHECKING:
    import train_config


class Validator:
    """Scores the model on held-out images inside their FOV: the loss (cross-entropy) and the
    metrics evaluate.py reports at threshold 0.5 (metrics.scores, the same code), each
    image predicted at the run's scale as evaluate.py does. Writes them to TensorBoard
    ({logdir}/validation_logs) and keeps the weights of the best step in {logdir}/best/."""

    def __init__(
        self,
        config: 'train_config.TrainConfig',
        unet: keras.Model,
        examples: list[dataset.Example],
        model_scale: scale.ModelScale,
    ) -> None:
        self.examples = examples
        self.inputs = [
            scale.at_model_scale(
                example.image,
                scale.disc_factor(example.mask, model_scale.fov_diameter, example.name),
                config.preprocess,
            )
            for example in examples
        ]  # once a run
        self.predict = inference.Predictor(unet, config.preprocess, model_scale).probabilities
        self.unet, self.metric, self.logdir = unet, config.best_metric, config.logdir
        self.writer = tf.summary.create_file_writer(
            os.path.join(config.logdir, run_folder.VALIDATION_DIR)
        )
        self.best = run_folder.read_best(config.logdir)

    def score(self) -> dict[str, float]:
        counts, losses = metrics.no_pixels(), []
        for example, image in zip(self.examples, self.inputs, strict=True):
            probability = scale.to_native(self.predict(image), example.mask.shape)
            fov = example.mask.astype(bool)
            truth = np.take_along_axis(probability, example.label[..., None].astype(int), -1)
            losses.append(float(-np.log(np.maximum(truth[..., 0][fov], 1e-7)).mean()))
            counts += metrics.count_pixels(example.label, probability[..., 1], fov)
        return {'loss': float(np.mean(losses)), **metrics.scores(counts)}

    def __call__(self, step: int) -> None:
        """Scores step `step`, writes the scalars, and keeps the weights if they are the best."""
        scores = self.score()
        with self.writer.as_default():
            for name, value in scores.items():
                if np.isfinite(value):
                    tf.summary.scalar(f'validation/{name}', value, step=step)
        value = scores[self.metric]
        logging.info(
            'validation at step %d: loss %.4f  F1 %.4f  AUC_ROC %.4f',
            step,
            scores['loss'],
            scores['F1'],
            scores['AUC_ROC'],
        )
        sign = -1 if self.metric == 'loss' else 1
        if np.isfinite(value) and (self.best is None or sign * value > sign * self.best['value']):
            self.best = {'step': step, 'metric': self.metric, 'value': value, 'scores': scores}
            run_folder.write_best(self.logdir, self.unet, self.best)

    def flush(self) -> None:
        self.writer.flush()
