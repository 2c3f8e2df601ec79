"""Vessel maps of unlabelled photos (evaluate.py --predict): for each photo its probabilities,
binary map and overlay as PNGs, and its row of the features report.

  python evaluate.py --logdir=models/all --predict='photos/*.jpg' --predict_dir=maps

Each photo is read, its FOV found, predicted at the model's scale by the run's predictor
(inference.Predictor) and its files written while the next photo is predicted.
"""

import concurrent.futures
import dataclasses
import glob
import os
import signal
import sys
import time

import numpy as np
import tqdm
from absl import logging

import cli
import errors
import fileio
import fov
import label_files
import report
import scale
import utils

PREDICTION_FILES = ('prob', 'mask', 'overlay')  # {name}_{suffix}.png for each photo
MANIFEST_CSV = 'manifest.csv'
MANIFEST_COLUMNS = ('image', 'outcome', 'scale_factor', 'scale_rule', 'seconds', 'reason')


def find_images(pattern: str) -> list[str]:
    """The image files --predict names: a file, a folder (its image files; how many files of other
    kinds it skipped is logged), or a glob pattern."""
    if os.path.isfile(pattern):
        return [pattern]
    if os.path.isdir(pattern):
        files = [
            name for name in os.listdir(pattern) if os.path.isfile(os.path.join(pattern, name))
        ]
        paths = sorted(os.path.join(pattern, name) for name in files if utils.is_image_name(name))
        utils.log_skipped(pattern, [name for name in files if not utils.is_image_name(name)])
    else:
        paths = sorted(glob.glob(pattern))
    if not paths:
        raise errors.UserError(f'--predict={pattern}: matches no files')
    return paths


def predict_files(predictor, pattern, out_dir, threshold, units, max_megapixels):
    """Probability maps, binary masks and overlays for unlabelled images, with derived FOV
    masks; each photo's files are written (and its features measured) while the next one is
    predicted. A file that cannot be read or predicted is reported and skipped; the run then
    ends with an error. Ctrl-C stops after the photo at hand, with the report of those done.
    units: report.Units of the features (None: no features.csv and report.html)."""
    paths = find_images(pattern)
    fileio.refuse_input_folder(out_dir, paths, '--predict_dir')
    fileio.remove_temporaries(out_dir, fileio.STALE_SECONDS)
    rows, interrupted = [], False
    try:
        with progress(len(paths)) as bar:
            for row in predicted_rows(predictor, paths, out_dir, threshold, units, max_megapixels):
                rows.append(row)
                bar.update()
                if bar.disable:  # no terminal to draw a bar on: a line a photo
                    log_row(len(rows), len(paths), paths[len(rows) - 1], row)
    except KeyboardInterrupt:
        interrupted = True
    failed = sum('decision' not in row for row in rows)
    print(f'wrote {len(PREDICTION_FILES) * (len(rows) - failed)} files to {out_dir}')
    with cli.SignalHandler(signal.SIG_IGN):  # a second Ctrl-C must not cut the records
        write_manifest(out_dir, rows)
        if units:
            report.publish(out_dir, rows, f'Vessel maps of {pattern}')
    if interrupted:
        raise errors.Interrupted(f'interrupted after {len(rows)} of {len(paths)} photos')
    if failed:
        raise errors.UserError(
            f'{failed} of {len(paths)} images could not be predicted (named above)'
        )
    return rows


def predicted_rows(predictor, paths, out_dir, threshold, units, max_megapixels):
    """Yields each photo's report row, in order, once its files are written; on Ctrl-C, the
    rows of the photos already written, then KeyboardInterrupt again."""
    pending, yielded, interrupted = None, 0, False  # (index, row or its Future, started)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        try:
            for index, (path, name) in enumerate(
                label_files.output_stems(paths, '--predict').items(), 1
            ):
                started = time.time()
                outcome = submitted(
                    writer, predictor, path, name, out_dir, threshold, units, max_megapixels
                )
                if pending:
                    yield finished(*pending[1:])
                    yielded = pending[0]
                pending = (index, outcome, started)
        except KeyboardInterrupt:
            interrupted = True
        if pending and pending[0] > yielded:
            yield finished(*pending[1:])
    if interrupted:
        raise KeyboardInterrupt


def submitted(writer, predictor, path, name, out_dir, threshold, units, max_megapixels):
    """The photo predicted and its files handed to `writer` (a Future of its report row), or
    where it cannot be read or predicted, the row that says why."""
    try:
        photo = predict_photo(predictor, path, threshold, max_megapixels)
        return writer.submit(write_photo, photo, out_dir, name, units)
    except errors.UserError as error:
        message = fileio.printable(errors.first_line(error))
        shown = fileio.printable(path)
        message = message if message.startswith(shown) else f'{shown}: {message}'
        print(f'error: {message}', file=sys.stderr)
        return report.unreadable(os.path.basename(path), message)


def finished(outcome, started):
    """The report row of one photo once its files are written (a failure's row as it is), with
    the seconds since its prediction started."""
    row = outcome.result() if isinstance(outcome, concurrent.futures.Future) else outcome
    row['seconds'] = time.time() - started  # a full disk (or any error writing) ended it above
    return row


def progress(total: int) -> tqdm.tqdm:
    """A progress bar of photos (done, photos/s, time left) on a terminal; disabled elsewhere."""
    return tqdm.tqdm(total=total, unit='photo', disable=not sys.stderr.isatty(), file=sys.stderr)


def log_row(index: int, count: int, path: str, row: dict) -> None:
    """One photo's log line: its vessel share, scale and flags (a refused one said its error)."""
    if 'decision' in row:
        logging.info(
            '[%d/%d] %s: %.1f%% of the FOV is vessel; scale x%.2f from the %s%s',
            index,
            count,
            fileio.printable(path),
            100 * row['share'],
            row['decision'].factor,
            row['decision'].rule,
            ''.join(f'; {flag}' for flag in row['flags']),
        )


def write_manifest(out_dir: str, rows: list[dict]) -> None:
    """manifest.csv: each photo's outcome (done, flagged, refused), its scale decision, the
    seconds it took and why it was flagged or refused."""
    lines = []
    for row in rows:
        decision = row.get('decision')
        outcome = 'refused' if decision is None else 'flagged' if row['flags'] else 'done'
        lines.append(
            [
                row['image'],
                outcome,
                f'{decision.factor:.4g}' if decision else '',
                decision.rule if decision else '',
                f"{row['seconds']:.2f}",
                '; '.join(row['flags']),
            ]
        )
    fileio.write_csv(os.path.join(out_dir, MANIFEST_CSV), list(MANIFEST_COLUMNS), lines)


@dataclasses.dataclass
class Photo:
    """One predicted photo: the RGB image, its FOV mask, vessel probabilities (0-255) and map
    inside the FOV, and how it was scaled (scale.Decision)."""

    path: str
    rgb: np.ndarray
    inside: np.ndarray
    probability: np.ndarray  # uint8: what {name}_prob.png holds
    vessels: np.ndarray
    decision: scale.Decision


def predict_photo(predictor, path, threshold, max_megapixels=utils.MAX_MEGAPIXELS):
    rgb = utils.read_image(path, max_megapixels=max_megapixels)
    inside = fov.read(rgb, path)
    probability, decision = predictor(rgb, inside, path)
    probability *= inside
    vessels = np.greater_equal(probability, threshold).view(np.uint8)
    vessels &= inside  # threshold 0 too
    np.rint(np.multiply(probability, 255, out=probability), out=probability)  # in place: photos
    return Photo(path, rgb, inside, probability.astype(np.uint8), vessels, decision)  # are large


def write_photo(photo, out_dir, name, units):
    """Writes {name}_prob.png, {name}_mask.png and {name}_overlay.png (the vessels in green on
    the photo), whole or not at all; returns the photo's report row, with the vessel share of
    its FOV."""
    images = {  # each made as it is written; the overlay is a copy for writing to spoil
        'prob': lambda: photo.probability,
        'mask': lambda: photo.vessels * 255,
        'overlay': lambda: utils.in_green(photo.rgb, photo.vessels),
    }
    written = [os.path.join(out_dir, f'{name}_{suffix}.png') for suffix in PREDICTION_FILES]
    try:
        for target, suffix in zip(written, PREDICTION_FILES, strict=True):
            fileio.write_png(target, images[suffix](), scratch=suffix == 'overlay')
    except BaseException:
        for target in written:
            if os.path.exists(target):
                os.remove(target)
        raise
    row = report.row(
        os.path.basename(photo.path),
        'predicted',
        photo.vessels,
        photo.inside,
        photo.decision,
        units,
    )
    return {
        **row,
        'thumbnail': f'{name}_overlay.png',
        'decision': photo.decision,
        'share': float(photo.vessels[photo.inside.astype(bool)].mean()),
    }
