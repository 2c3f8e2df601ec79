"""Evaluates a trained run inside the FOV, draws overlays, or predicts vessel maps for new images.

  python evaluate.py --logdir=log/retina --label_file_path=data/CHASEDB/test.txt --visulize=True
  python evaluate.py --logdir=log/retina --predict='photos/*.jpg'
  python evaluate.py --logdir=log/drive --label_file_path=data/DRIVE/test.txt \
      --calibrate_on=data/DRIVE/training.txt --tta   # the benchmarks' evaluation

The architecture comes from {logdir}/architecture.json (written by train.py); architecture flags
are only checked against it. --checkpoint picks the weights (last, best, or a kept step). Each
image is brought to the scale the model learned (its FOV diameter, {logdir}/scale.json),
predicted, and its probabilities mapped back to the image's own size, so photos from any camera
work; --norescale predicts images as they are. Metrics count the pixels inside the FOV mask, at
native size, at --threshold or at the threshold that --calibrate_on chooses on other (training)
images; each evaluation writes its own folder under {logdir}/evaluations/, named by label file,
checkpoint and threshold.
"""

import cli
import errors
import fileio
import label_files
import utils

cli.quiet_tensorflow()

import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import dataset  # noqa: E402
import inference  # noqa: E402
import metrics  # noqa: E402
import model  # noqa: E402
import photos  # noqa: E402
import report  # noqa: E402
import scale_tf  # noqa: E402

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What one evaluation or prediction does: the flags of evaluate.py (read only by main), whose
    defaults are these fields'."""

    logdir: str | None = None
    label_file_path: str | None = None
    checkpoint: str = 'last'
    architecture: dict = dataclasses.field(default_factory=dict)  # the flags the user named
    threshold: float = 0.5
    calibrate_on: str | None = None
    tta: bool = False
    tile_size: int = 0
    tile_overlap: int = 128
    rescale: bool = True
    photo_fov_diameter: float | None = None
    scale_by: str = 'fov'
    predict: str | None = None
    predict_dir: str | None = None
    output_dir: str | None = None
    export_dir: str | None = None
    visulize: bool = False
    features: bool = True
    fov_degrees: float | None = None
    pixel_size_um: float | None = None
    max_megapixels: float = utils.MAX_MEGAPIXELS

    def units(self) -> report.Units | None:
        """What gives the features their physical scale; None without --features."""
        if not self.features:
            return None
        return report.Units(self.photo_fov_diameter, self.fov_degrees, self.pixel_size_um)

    @classmethod
    def from_flags(cls):
        if FLAGS.calibrate_on and FLAGS['threshold'].present:
            raise errors.UserError('give --threshold or --calibrate_on, not both')
        names = [field.name for field in dataclasses.fields(cls) if field.name != 'architecture']
        return cls(
            **{name: FLAGS[name].value for name in names},
            architecture={
                key: FLAGS[key].value for key in model.ARCHITECTURE_KEYS if FLAGS[key].present
            },
        )


DEFAULT = EvalConfig()

cli.define_flags(
    'logdir',
    'label_file_path',
    'batch_size',
    'preprocess',
    'transpose_conv',
    'base_channels',
    'depth',
    'num_classes',
    'visulize',
    'output_dir',
)
flags.DEFINE_float(
    'threshold',
    DEFAULT.threshold,
    'Vessel probability at or above which a pixel is vessel (0 to 1).',
)
flags.DEFINE_string(
    'calibrate_on',
    DEFAULT.calibrate_on,
    'A label file (the training set, never the test set): '
    'use the threshold that maximises F1 on its images instead of --threshold.',
)
flags.DEFINE_bool(
    'tta',
    DEFAULT.tta,
    'Test-time augmentation: average the predictions for the image and '
    'its three flips (4x the inference time).',
)
flags.DEFINE_integer(
    'tile_size',
    DEFAULT.tile_size,
    'Predict in tiles of this side (a multiple of 16) for '
    'images too large for memory; 0 predicts whole images.',
    lower_bound=0,
)
flags.DEFINE_integer(
    'tile_overlap',
    DEFAULT.tile_overlap,
    'Context (a multiple of 16) around each tile, cut '
    'away after predicting; 128 covers the U-Net receptive field.',
    lower_bound=0,
)
flags.DEFINE_string(
    'predict',
    DEFAULT.predict,
    'Predict images with no labels instead of evaluating: a '
    'folder or a glob of PNG/JPEG/TIFF/GIF/BMP/WebP files.',
)
flags.DEFINE_string(
    'predict_dir',
    DEFAULT.predict_dir,
    'Where --predict writes (default {logdir}/predictions; not the folder of the input images).',
)
flags.DEFINE_string(
    'export_dir', DEFAULT.export_dir, 'Also export a SavedModel for serving to this folder.'
)
flags.DEFINE_bool(
    'rescale',
    DEFAULT.rescale,
    "Resize each image so its FOV diameter matches the model's "
    '(scale.json) before predicting, and the probabilities back; runs without '
    'scale.json predict images as they are.',
)
flags.DEFINE_enum(
    'scale_by',
    DEFAULT.scale_by,
    ['fov', 'vessels'],
    "How --rescale sets the factor of a photo whose FOV shows a disc: 'fov', the disc's "
    "diameter against the model's; 'vessels', from there the main vessels' calibre matched "
    "to the model's, in up to three more predictions (for cameras the model never saw: "
    'docs/scale.md).',
)
flags.DEFINE_bool(
    'features',
    DEFAULT.features,
    'Measure every vessel map (features.csv) and write report.html beside the outputs.',
)
flags.DEFINE_float(
    'photo_fov_diameter',
    DEFAULT.photo_fov_diameter,
    "The photos' FOV diameter in pixels, where you "
    'know it: it sets their scale instead of the FOV found in each photo (needed '
    'where a FOV fills the frame and shows too few vessels to tell the scale).',
    lower_bound=1,
)
flags.DEFINE_float(
    'fov_degrees',
    DEFAULT.fov_degrees,
    "The camera's field angle across the FOV diameter (e.g. "
    '45): adds millimetre columns to features.csv.',
    lower_bound=1,
    upper_bound=360,
)
flags.DEFINE_float(
    'pixel_size_um',
    DEFAULT.pixel_size_um,
    'The size of one pixel on the retina in micrometres (instead of --fov_degrees).',
    lower_bound=0.01,
    upper_bound=1000,
)
flags.DEFINE_float(
    'max_megapixels',
    DEFAULT.max_megapixels,
    'The largest photo --predict reads, in megapixels as its header declares them: a larger '
    'one is refused before it is decoded (a 1 MB PNG can declare 20000x20000 pixels).',
    lower_bound=0.001,
)
flags.DEFINE_string(
    'checkpoint',
    DEFAULT.checkpoint,
    "The weights to use: 'last', 'best' (the best "
    "validation step's, with train.py --validation_label_file) or a step number "
    'whose checkpoint is kept.',
)
flags.register_validator(
    'checkpoint',
    lambda value: value in ('last', 'best') or value.isdigit(),
    message="--checkpoint must be 'last', 'best' or a step number",
)
flags.register_validator(
    'threshold',
    lambda value: 0 <= value <= 1,
    message='--threshold must be a probability between 0 and 1',
)
for _name in ('tile_size', 'tile_overlap'):
    flags.register_validator(
        _name,
        lambda value: value % model.MULTIPLE == 0,
        message=f'--{_name} must be a multiple of {model.MULTIPLE}',
    )

METRICS_JSON, METRICS_CSV = 'metrics.json', 'metrics.csv'
EXPORT_MARKER = 'retina-unet-export.json'  # in each SavedModel evaluate.py writes
OVERLAY_DIR = 'overlays'
EVALUATIONS_DIR = 'evaluations'
REPORTED = ('F1', 'Acc', 'Se', 'Sp', 'Precision', 'AUC_ROC', 'AUC_PR', 'IoU', 'mIoU')


def calibrate_threshold(predictor, label_file, evaluated=None):
    """The threshold with the best F1 over the FOV pixels of the images `label_file` lists (one
    or several comma-separated label files), none of which may be an image of the `evaluated`
    label file: that would tune the threshold on the test set."""
    samples = label_files.samples_of(label_file, '--calibrate_on')
    if evaluated:
        tested = {
            os.path.realpath(sample.image) for sample in label_files.parse_label_file(evaluated)
        }
        for sample in samples:
            if os.path.realpath(sample.image) in tested:
                raise errors.UserError(
                    f'--calibrate_on={label_file}: lists {sample.image}, an image of the '
                    f'evaluated {evaluated}; calibrate on other images (the training set)'
                )
    counts = metrics.no_pixels()
    for example in dataset.iter_examples(samples):
        probability = predictor(example.image, example.mask, example.name)[0]
        counts += metrics.count_pixels(example.label, probability, example.mask)
    threshold, f1 = metrics.best_f1_threshold(counts.histogram)
    print(
        f'--calibrate_on: threshold {threshold:.4f}, the best F1 ({f1:.4f}) on the '
        f'{len(samples)} images of {label_file}'
    )
    return threshold


def export(unet: keras.Model, export_dir: str, model_diameter: float | None) -> None:
    """A SavedModel for serving. `serve` maps a float batch [N, H, W, C] in [0, 1] (what the
    model sees: RGB, or the preprocessed gray image) of any size to vessel probabilities
    [N, H, W]. Where the run recorded its scale, `serve_at_scale` also takes each image's FOV
    diameter in pixels [N] and predicts each image at the model's scale, as evaluate.py does
    (except that a preprocessed image is resized after preprocessing, not before)."""
    archive = keras.export.ExportArchive()
    archive.track(unet)
    images = tf.TensorSpec([None, None, None, unet.input_shape[-1]], tf.float32, name='images')
    archive.add_endpoint(
        'serve',
        lambda batch: model.predict_probabilities(unet, batch)[..., 1],
        input_signature=[images],
    )
    if model_diameter:
        archive.add_endpoint(
            'serve_at_scale',
            lambda batch, diameters: scale_tf.predict_at_scale(
                unet, batch, diameters, model_diameter
            ),
            input_signature=[images, tf.TensorSpec([None], tf.float32, name='fov_diameters')],
        )
    temporary = fileio.temporary_dir(export_dir)
    try:
        archive.write_out(temporary, verbose=False)
        fileio.write_json(
            os.path.join(temporary, EXPORT_MARKER), {'model_fov_diameter': model_diameter}
        )
        replace_folder(temporary, export_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(f'SavedModel for serving: {export_dir}')


def replace_folder(new, old):
    """Puts folder `new` in the place of `old` (which may not exist) by renames: the old folder
    stays whole until the new one is complete."""
    if not os.path.isdir(old):
        os.rename(new, old)
        return
    retired = fileio.temporary_dir(old)
    os.rename(old, os.path.join(retired, 'old'))
    os.rename(new, old)
    shutil.rmtree(retired)


def check_export_dir(export_dir: str, kept: list[str]) -> None:
    """Refuses an --export_dir whose replacement could lose anything but an earlier export: a
    file; a folder that holds other files than a SavedModel evaluate.py wrote (EXPORT_MARKER);
    one that is, holds or lies inside a folder of `kept` (the run folder, the inputs' folders,
    the output folder)."""
    flag = f'--export_dir={export_dir}'
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise errors.UserError(f'{flag}: a file, not a folder')
    for folder in kept:
        if fileio.overlaps(export_dir, folder):
            raise errors.UserError(
                f'{flag}: is, holds or lies inside {folder} (the run folder, an input or an '
                'output folder), which an export would replace; choose a folder of its own'
            )
    if (
        os.path.isdir(export_dir)
        and os.listdir(export_dir)
        and not os.path.isfile(os.path.join(export_dir, EXPORT_MARKER))
    ):
        raise errors.UserError(
            f'{flag}: holds files that are not a SavedModel evaluate.py wrote (no '
            f'{EXPORT_MARKER}); only such a folder, or an empty one, is replaced'
        )
    fileio.writable_dir(os.path.dirname(os.path.abspath(export_dir)), '--export_dir')


# ----------------------------------------------------------------------------- evaluation


def format_score(value):
    """A metric to 4 decimals, or 'undefined' (NaN: e.g. F1 with no vessel labelled or found)."""
    return 'undefined' if np.isnan(value) else f'{value:.4f}'


def format_scores(scores):
    return '  '.join(f'{key} {format_score(scores[key])}' for key in REPORTED if key in scores)


def evaluate(predictor, samples, threshold, overlay_dir, units):
    """Predicts every sample, one image in memory at a time, and prints progress; returns the
    per-image metrics, the whole-set result and the report rows (the features of the predicted
    and the manual maps, measured in report.Units `units`; None: none)."""
    rows, second, measured, pending = [], [], [], None
    counts = metrics.no_pixels()
    examples = dataset.iter_examples(samples)
    # Each image's overlays and features are made while the next one is predicted.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        for index, (sample, example) in enumerate(zip(samples, examples, strict=True), 1):
            started = time.time()
            probability, decision = predictor(example.image, example.mask, sample.image)
            inside = example.mask.astype(bool)
            image_counts = metrics.count_pixels(example.label, probability, inside, threshold)
            counts += image_counts
            scores = metrics.scores(image_counts)
            rows.append(
                {'image': example.name, **scores, 'confusion_matrix': image_counts.matrix.tolist()}
            )
            second_path = label_files.second_observer_path(sample)
            if second_path:
                second.append(
                    metrics.confusion_matrix(example.label, utils.read_binary(second_path), inside)
                )
            logging.info(
                '[%d/%d] %s  %.2fs  %s',
                index,
                len(samples),
                example.name,
                time.time() - started,
                format_scores(scores),
            )
            measured += pending.result() if pending else []
            pending = writer.submit(
                figures_and_features, example, probability, decision, threshold, overlay_dir, units
            )
        measured += pending.result()
    return rows, whole_set_result(counts, second, threshold, len(rows), overlay_dir), measured


def whole_set_result(counts, second, threshold, images, overlay_dir):
    """The set's scores from its summed counts (and the second observer's, where there is
    one); with overlay_dir, its ROC and PR curves too."""
    scores = metrics.scores(counts)
    result = {
        'confusion_matrix': counts.matrix.tolist(),
        'scores': scores,
        'threshold': threshold,
        'images': images,
    }
    if second:
        result['second_observer'] = metrics.scores_from_confusion(sum(second))
    if overlay_dir:
        write_curves(overlay_dir, counts.histogram, scores, result.get('second_observer'))
    return result


def figures_and_features(example, probability, decision, threshold, overlay_dir, units):
    """Writes the image's overlays (with an overlay_dir); returns its report rows (with
    report.Units `units`)."""
    if overlay_dir:
        write_overlay(
            overlay_dir,
            example.name,
            example.image,
            example.label,
            probability,
            example.mask.astype(bool),
            threshold,
        )
    if not units:
        return []
    return measured_pair(example, probability >= threshold, overlay_dir, decision, units)


def measured_pair(example, prediction, overlay_dir, decision, units):
    """The report rows of one labelled image: its predicted map, then its manual one."""
    thumbnail = f'{OVERLAY_DIR}/{example.name}.png' if overlay_dir else None
    return [
        {
            **report.row(example.name, source, vessels, example.mask, decision, units),
            'thumbnail': thumbnail,
        }
        for source, vessels in (
            ('predicted', prediction & example.mask.astype(bool)),
            ('manual', example.label),
        )
    ]


def print_result(result):
    """The original's printout, then the metrics papers report."""
    print('confuse mat:\n', np.array(result['confusion_matrix']))
    for key in ('IoU', 'mIoU'):
        value = result['scores'][key]
        print(f'{key}: ', 'undefined' if np.isnan(value) else value)
    how = [f"best F1 on {result['calibrated_on']}"] if result['calibrated_on'] else []
    how += ['test-time flips'] if result['tta'] else []
    print(
        f"inside the FOV, threshold {result['threshold']:.4g}"
        + (f" ({', '.join(how)})" if how else '')
        + f", {result['images']} images:"
    )
    print('  model:          ', format_scores(result['scores']))
    if 'second_observer' in result:
        print('  second observer:', format_scores(result['second_observer']))


def write_results(out_dir, rows, result, step):
    """metrics.json, metrics.csv and the TensorBoard scalars of one evaluation."""
    fileio.write_json(os.path.join(out_dir, METRICS_JSON), {**result, 'per_image': rows})
    columns = ['image', *REPORTED]
    fileio.write_csv(
        os.path.join(out_dir, METRICS_CSV),
        columns,
        (
            [csv_cell(row.get(key, '')) for key in columns]
            for row in rows + [{'image': 'all', **result['scores']}]
        ),
    )
    try:
        with tf.summary.create_file_writer(out_dir).as_default():
            for key in REPORTED:
                if not np.isnan(result['scores'][key]):
                    tf.summary.scalar(f'eval/{key}', result['scores'][key], step=step)
    except (tf.errors.OpError, OSError) as error:
        raise errors.UserError(
            f'{out_dir}: could not write the TensorBoard scalars (is the disk '
            f'full? {errors.first_line(error)})'
        ) from None


def csv_cell(value):
    """A metric as metrics.csv holds it: undefined (NaN) is an empty cell."""
    return '' if isinstance(value, float) and np.isnan(value) else value


def evaluation_name(
    label_file,
    checkpoint,
    threshold,
    calibrate_on,
    tta,
    rescale=True,
    tiles=None,
    scale_by='fov',
):
    """The folder of one evaluation, from what it evaluates: e.g. DRIVE-test_step4000_threshold0.5
    or DRIVE-test_best-step3500_calibrated-on-DRIVE-training_tta_norescale_tiles256-128
    (tiles: (size, overlap) of tiled inference; scale_by 'vessels' adds scale-by-vessels)."""

    def data(paths):  # one or several comma-separated label files
        return '+'.join(
            f'{os.path.basename(folder)}-{os.path.splitext(name)[0]}'
            for folder, name in map(
                os.path.split, map(os.path.abspath, label_files.paths_of(paths))
            )
        )

    how = f'calibrated-on-{data(calibrate_on)}' if calibrate_on else f'threshold{threshold:g}'
    return '_'.join(
        [data(label_file), checkpoint, how]
        + (['tta'] if tta else [])
        + ([] if rescale else ['norescale'])
        + (['scale-by-vessels'] if rescale and scale_by == 'vessels' else [])
        + ([f'tiles{tiles[0]}-{tiles[1]}'] if tiles else [])
    )


# ----------------------------------------------------------------------------- figures


def write_overlay(directory, name, rgb, label, probability, inside, threshold):
    """{name}.png: the input above, the coloured comparison drawn on it below;
    {name}_prob.png: the vessel probability as a gray image."""
    prediction = (probability >= threshold) & inside
    coloured = utils.overlay(rgb, label, prediction)
    fileio.write_png(os.path.join(directory, f'{name}.png'), np.concatenate([rgb, coloured]))
    fileio.write_png(
        os.path.join(directory, f'{name}_prob.png'),
        np.rint(255 * probability * inside).astype(np.uint8),
    )


def write_curves(directory, histogram, scores, second_observer):
    """ROC and precision-recall curves (from metrics.PixelCounts' histogram), with the second
    observer as a point where known."""
    plt = fileio.pyplot()
    points = metrics.curves(histogram)
    panels = {
        'roc.png': (
            'fpr',
            'tpr',
            'AUC_ROC',
            'false positive rate (1 - Sp)',
            'true positive rate (Se)',
            lambda s: (1 - s['Sp'], s['Se']),
        ),
        'pr.png': (
            'recall',
            'precision',
            'AUC_PR',
            'recall (Se)',
            'precision',
            lambda s: (s['Se'], s['Precision']),
        ),
    }
    for filename, (x, y, key, x_label, y_label, observer_point) in panels.items():
        fig, axis = plt.subplots(figsize=(4.5, 4.5))
        axis.plot(points[x], points[y], label=f'U-Net ({key} {scores[key]:.4f})')
        if second_observer:
            axis.plot(
                *observer_point(second_observer), 'o', color='tab:red', label='second observer'
            )
        axis.set(xlabel=x_label, ylabel=y_label, xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(loc='lower right' if filename == 'roc.png' else 'lower left')
        axis.grid(alpha=0.3)
        fileio.save_figure(fig, os.path.join(directory, filename))


def evaluation_folders(config, out_dir, checkpoint, threshold, samples):
    """This evaluation's folder under out_dir/evaluations and its overlay folder (None without
    --visulize), checked to hold no input, with stale temporary files removed."""
    tiles = (config.tile_size, config.tile_overlap) if config.tile_size else None
    name = evaluation_name(
        config.label_file_path,
        checkpoint,
        threshold,
        config.calibrate_on,
        config.tta,
        config.rescale,
        tiles,
        config.scale_by,
    )
    out_dir = os.path.join(out_dir, EVALUATIONS_DIR, name)
    overlay_dir = os.path.join(out_dir, OVERLAY_DIR) if config.visulize else None
    inputs = [path for sample in samples for path in (sample.image, sample.label, sample.mask)]
    for folder in (out_dir, overlay_dir):
        fileio.refuse_input_folder(folder, inputs, '--output_dir')
        if folder and os.path.isdir(folder):
            fileio.remove_temporaries(folder, fileio.STALE_SECONDS)
    return out_dir, overlay_dir


def evaluate_label_file(predictor, config, threshold, out_dir, checkpoint, step, model_scale):
    """Evaluates the images config.label_file_path lists; prints the results and writes them to
    their own folder under out_dir/evaluations, named by label file, checkpoint and threshold.
    Returns the result metrics.json holds."""
    label_file = config.label_file_path
    samples = label_files.parse_label_file(label_file)
    out_dir, overlay_dir = evaluation_folders(config, out_dir, checkpoint, threshold, samples)
    started = time.time()
    rows, result, measured = evaluate(predictor, samples, threshold, overlay_dir, config.units())
    seconds = time.time() - started
    logging.info('evaluated %d images in %.1fs', len(rows), seconds)
    result.update(
        calibrated_on=config.calibrate_on,
        tta=config.tta,
        rescale=config.rescale,
        scale_by=config.scale_by,
        model_fov_diameter=model_scale and model_scale.fov_diameter,
        label_file=label_file,
        checkpoint=checkpoint,
        seconds=round(seconds, 2),
    )
    print_result(result)
    write_results(out_dir, rows, result, step)
    print(f'metrics: {os.path.join(out_dir, METRICS_JSON)}, {os.path.join(out_dir, METRICS_CSV)}')
    if overlay_dir:
        print(f'overlays, probability maps and ROC/PR curves: {overlay_dir}/')
    if config.features:
        report.publish(out_dir, measured, f'Vessel maps of {label_file} ({checkpoint})')
    return {**result, 'per_image': rows, 'out_dir': out_dir}


def run(config: EvalConfig) -> dict | list[dict]:
    """Evaluates config.label_file_path (returns what metrics.json holds, with 'per_image' and
    'out_dir') or, with config.predict, predicts those photos (returns their report rows)."""
    predictor = make_predictor(config)
    out_dir = check_outputs(config)
    model_scale = predictor.model_scale
    if config.export_dir:
        export(predictor.unet, config.export_dir, model_scale and model_scale.fov_diameter)
    threshold = config.threshold
    if config.calibrate_on:
        threshold = calibrate_threshold(
            predictor, config.calibrate_on, None if config.predict else config.label_file_path
        )
    if config.predict:
        return photos.predict_files(
            predictor, config.predict, out_dir, threshold, config.units(), config.max_megapixels
        )
    return evaluate_label_file(
        predictor, config, threshold, out_dir, predictor.checkpoint, predictor.step, model_scale
    )


def make_predictor(config: EvalConfig) -> inference.Predictor:
    """The inference.Predictor of the run folder config.logdir, as the flags set it."""
    return inference.Predictor.from_run(
        config.logdir,
        config.checkpoint,
        config.architecture,
        config.rescale,
        tile_size=config.tile_size,
        tile_overlap=config.tile_overlap,
        tta=config.tta,
        by_vessels=config.scale_by == 'vessels',
        photo_fov_diameter=config.photo_fov_diameter,
    )


def check_outputs(config: 'EvalConfig') -> str:
    """Checks the settings and that the output folder is writable before any work; returns it."""
    if config.predict:
        out_dir = fileio.writable_dir(
            config.predict_dir or os.path.join(config.logdir, 'predictions'), '--predict_dir'
        )
    elif not config.label_file_path:
        raise errors.UserError('--label_file_path is required (or --predict for unlabelled images)')
    else:
        out_dir = fileio.writable_dir(config.output_dir or config.logdir, '--output_dir')
    if config.export_dir:
        check_export_dir(config.export_dir, [config.logdir, out_dir, *input_folders(config)])
    return out_dir


def input_folders(config: 'EvalConfig') -> set[str]:
    """The folders of every file this evaluation or prediction reads."""
    given = [config.calibrate_on, None if config.predict else config.label_file_path]
    label_paths = [path for paths in given if paths for path in label_files.paths_of(paths)]
    paths = [
        *(photos.find_images(config.predict) if config.predict else []),
        *label_paths,
        *(
            path
            for label_file in label_paths
            for sample in label_files.parse_label_file(label_file)
            for path in (sample.image, sample.label, sample.mask)
        ),
    ]
    return {os.path.dirname(os.path.abspath(path)) for path in paths}


def main(argv: list[str]) -> None:
    del argv
    run(EvalConfig.from_flags())


if __name__ == '__main__':
    app.run(cli.run_main(main))
