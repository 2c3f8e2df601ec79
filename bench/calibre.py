"""Adds the main-vessel calibre (scale.json's vessel_calibre) to runs trained before train.py
recorded it, from the images they trained on, as train.py does at the end of a run.

  python -m bench.calibre models/drive models/chase models/drive_chase

The label files are the run's own (config.json), under the current folder's data/.
"""

import dataclasses
import sys

import cli  # noqa: E402

cli.quiet_tensorflow()

import dataset  # noqa: E402
import inference  # noqa: E402
import run_folder  # noqa: E402
import train  # noqa: E402
import train_config  # noqa: E402


def add_calibre(folder):
    config, _ = train_config.load_saved(folder)
    unet = inference.load_model(folder)[0]
    examples = dataset.load_label_files(
        config.label_file_path, config.preprocess, config.fov_diameter or None
    )
    train.record_calibre(
        unet, dataclasses.replace(config, logdir=folder), examples, run_folder.load_scale(folder)
    )
    print(f'{folder}: {run_folder.load_scale(folder)}')


if __name__ == '__main__':
    from absl import flags

    flags.FLAGS(sys.argv[:1])
    for path in sys.argv[1:]:
        add_calibre(path)
