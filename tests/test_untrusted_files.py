"""Crafted run-folder files and label files: a one-line error naming file and field, nothing
written outside the output folder, no input overwritten."""

import json
import os

import pytest

import errors
import fileio
import label_files
import run_folder
import train_config


def write_label_file(tmp_path, rows):
    for folder in ('images', 'labels', 'masks'):
        (tmp_path / folder).mkdir(exist_ok=True)
    for name in {row[0] for row in rows}:
        for folder in ('images', 'labels', 'masks'):
            (tmp_path / folder / name).write_bytes(b'x')
    path = tmp_path / 'list.txt'
    path.write_text('images,labels,masks\n' + ''.join(f'{a},{a},{a}\n' for (a,) in rows))
    return str(path)


def test_an_absolute_or_dotted_image_name_names_outputs_by_its_stem_only(tmp_path):
    precious = tmp_path / 'elsewhere' / 'precious.png'
    precious.parent.mkdir()
    precious.write_bytes(b'x')
    path = tmp_path / 'list.txt'
    path.write_text(f'images,labels,masks\n{precious},{precious},{precious}\n')
    [sample] = label_files.parse_label_file(str(path))
    assert sample.name == 'precious' and sample.image == str(precious)


def test_an_image_listed_twice_is_refused(tmp_path):
    path = write_label_file(tmp_path, [('a.png',), ('a.png',)])
    with pytest.raises(errors.UserError, match='would write the same outputs'):
        label_files.parse_label_file(path)


def test_the_output_folder_may_not_hold_an_input(tmp_path):
    (tmp_path / 'eye.png').write_bytes(b'x')
    with pytest.raises(errors.UserError, match=r'the folder of the input images \('):
        fileio.refuse_input_folder(str(tmp_path), [str(tmp_path / 'eye.png')], '--output_dir')
    fileio.refuse_input_folder(str(tmp_path / 'new'), [str(tmp_path / 'eye.png')], '--output_dir')


@pytest.mark.parametrize(
    'best, field',
    [
        ({'step': '/../../../../tmp/ESCAPED', 'metric': 'F1', 'value': 0.5, 'scores': {}}, 'step'),
        ({'step': 3.5, 'metric': 'F1', 'value': 0.5, 'scores': {}}, 'step'),
        ({'metric': 'F1'}, 'step'),
        ({'step': 3, 'metric': 'F2', 'value': 0.5, 'scores': {}}, 'metric'),
    ],
)
def test_a_crafted_best_json_names_the_field(tmp_path, best, field):
    (tmp_path / run_folder.BEST_DIR).mkdir()
    (tmp_path / run_folder.BEST_DIR / run_folder.BEST_FILE).write_text(json.dumps(best))
    with pytest.raises(errors.UserError, match=f'best.json: "{field}" (must be|is missing)'):
        run_folder.read_best(str(tmp_path))


def test_not_an_object_a_fifo_or_a_dangling_link_is_refused(tmp_path):
    (tmp_path / run_folder.SCALE_FILE).write_text('[1, 2]')
    with pytest.raises(errors.UserError, match='expected a JSON object'):
        run_folder.load_scale(str(tmp_path))
    for text, message in (
        ('{"fov_diameter": 1e5}', 'must be a FOV diameter'),
        ('{"fov_diameter": Infinity}', 'not valid JSON'),
    ):
        (tmp_path / run_folder.SCALE_FILE).write_text(text)
        with pytest.raises(errors.UserError, match=message):
            run_folder.load_scale(str(tmp_path))
    os.remove(tmp_path / run_folder.SCALE_FILE)
    os.mkfifo(tmp_path / run_folder.SCALE_FILE)
    with pytest.raises(errors.UserError, match='not a regular file'):
        run_folder.load_scale(str(tmp_path))  # would block forever if opened
    os.remove(tmp_path / run_folder.SCALE_FILE)
    os.symlink(tmp_path / 'gone', tmp_path / run_folder.SCALE_FILE)
    with pytest.raises(errors.UserError, match='a link to a file that does not exist'):
        run_folder.load_scale(str(tmp_path))
    (tmp_path / run_folder.ARCHITECTURE_FILE).write_text(
        json.dumps(
            {'num_classes': 2, 'base_channels': 4096, 'transpose_conv': False, 'preprocess': True}
        )
    )
    with pytest.raises(errors.UserError, match='"base_channels" must be an integer from 1 to 512'):
        run_folder.load_architecture(str(tmp_path))


@pytest.mark.parametrize(
    'change, message',
    [
        ({'patch_size': '32'}, '"settings.patch_size" must be an integer, found "32"'),
        ({'save_interval': 0}, '"settings.save_interval" must be an integer'),
        ({'batch_size': 4.0}, '"settings.batch_size" must be an integer'),
        ({'augmentation': 'false'}, '"settings.augmentation" must be true or false'),
        ({'seed': None}, '"settings.seed" must be an integer'),
        ({'patch_size': None}, '"settings.patch_size" is missing'),
    ],
)
def test_config_json_settings_are_checked_as_their_flags(tmp_path, change, message):
    settings = json.loads(open(os.path.join('models', 'drive', 'config.json')).read())
    for key, value in change.items():
        if key == 'patch_size' and value is None:
            del settings['settings'][key]
        else:
            settings['settings'][key] = value
    (tmp_path / run_folder.CONFIG_FILE).write_text(json.dumps(settings))
    with pytest.raises(errors.UserError, match=message.replace('.', r'\.')):
        train_config.load_saved(str(tmp_path))


def test_the_shipped_config_reads_back():
    config, knots = train_config.load_saved(os.path.join('models', 'drive'))
    assert (
        config.patch_size == 64 and config.batch_size == 32 and knots == [[0, 0.001], [4000, 0.0]]
    )


def test_a_run_saved_before_depth_was_a_setting_has_the_original_depth(tmp_path):
    """The shipped models' architecture.json and config.json predate --depth: they read as the
    original's 4 poolings; a depth the model cannot have is refused."""
    folder = os.path.join('models', 'drive')
    assert 'depth' not in json.load(open(os.path.join(folder, run_folder.ARCHITECTURE_FILE)))
    assert run_folder.load_architecture(folder)['depth'] == 4
    assert train_config.load_saved(folder)[0].depth == 4
    architecture = {'num_classes': 2, 'base_channels': 8, 'transpose_conv': False}
    (tmp_path / run_folder.ARCHITECTURE_FILE).write_text(
        json.dumps({**architecture, 'preprocess': True, 'depth': 5})
    )
    with pytest.raises(errors.UserError, match='"depth" must be an integer from 1 to 4, found 5'):
        run_folder.load_architecture(str(tmp_path))


def test_a_run_saved_before_vessel_weight_was_a_setting_trained_unweighted(tmp_path):
    """config.json files from before --vessel_weight read as 1 (every pixel weighing the same);
    a weight its flag refuses is refused when read back."""
    folder = os.path.join('models', 'drive')
    settings = json.load(open(os.path.join(folder, run_folder.CONFIG_FILE)))
    assert 'vessel_weight' not in settings['settings']
    assert train_config.load_saved(folder)[0].vessel_weight == 1.0
    settings['settings']['vessel_weight'] = 0
    (tmp_path / run_folder.CONFIG_FILE).write_text(json.dumps(settings))
    with pytest.raises(errors.UserError, match='"settings.vessel_weight" must be a number'):
        train_config.load_saved(str(tmp_path))


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('my notes\n')
    logdir = tmp_path / 'log'
    logdir.mkdir()
    os.symlink(notes, logdir / run_folder.LOCK_FILE)
    with pytest.raises(errors.UserError, match='a symbolic link, not the lock'):
        run_folder.acquire_lock(str(logdir))
    assert notes.read_text() == 'my notes\n'
    os.remove(logdir / run_folder.LOCK_FILE)
    os.mkfifo(logdir / run_folder.LOCK_FILE)
    with pytest.raises(errors.UserError, match='not a regular file'):
        run_folder.acquire_lock(str(logdir))


def test_a_gzipped_photo_is_named_by_its_stem():
    stems = label_files.output_stems(
        ['s/im0001.ppm.gz', 's/im0002.ppm', 'eye.png', 'eye.jpg'], '--predict'
    )
    assert stems == {
        's/im0001.ppm.gz': 'im0001',
        's/im0002.ppm': 'im0002',
        'eye.png': 'eye.png',
        'eye.jpg': 'eye.jpg',
    }
