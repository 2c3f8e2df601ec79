"""Runs you can trust and compare: every setting saved with the run and checked on resume, an
extension that never raises the learning rate, validation during training with the best
checkpoint kept, and evaluations of any checkpoint side by side. Training runs in process:
train.train(strategy, config) reads no flags."""

import dataclasses
import json
import logging
import os
import signal

import pytest
import tensorflow as tf

import errors
import train
import train_config
from conftest import (
    TINY,
    checkpoint_step,
    evaluation_dir,
    last_line,
    read_events,
    run_here,
    run_script,
    signal_at,
    steps_of,
)


def config(tmp_path, synthetic, **changes):
    return train_config.TrainConfig(
        logdir=str(tmp_path / 'log'), label_file_path=synthetic['training'], **{**TINY, **changes}
    )


def run(settings):
    return train.train(tf.distribute.get_strategy(), settings)


def scalars(logdir, tag, folder='train_logs'):
    """{step: value} of one tag."""
    return {step: float(value) for step, value in read_events(logdir, folder).get(tag, [])}


def test_every_setting_is_saved_and_a_contradicting_resume_is_refused(tmp_path, synthetic):
    settings = config(tmp_path, synthetic, max_iters=6, save_interval=3)
    run(settings)
    saved = json.load(open(tmp_path / 'log' / 'config.json'))
    assert saved['settings'] == dataclasses.asdict(settings)
    assert saved['learning_rate_knots'] == [[0, 3e-3], [6, 0.0]]
    assert saved['versions']['tensorflow'] == tf.__version__
    with pytest.raises(errors.UserError) as error:
        run(dataclasses.replace(settings, initial_lr=1e-3, patch_size=48, max_iters=9))
    assert str(error.value) == (
        f'--logdir={settings.logdir} was trained with other settings: --patch_size=48 (saved: '
        '32), --initial_lr=0.001 (saved: 0.003); only logdir, max_iters, save_interval, '
        'log_interval, validation_interval may change on resume (or train into a new --logdir)'
    )
    with pytest.raises(errors.UserError, match='ended at step 6 with learning rate 0'):
        run(dataclasses.replace(settings, max_iters=9))  # nothing left to learn with


def test_a_resume_compares_label_files_by_the_files_they_name(tmp_path, synthetic, monkeypatch):
    training, test = synthetic['training'], synthetic['test']  # absolute paths
    saved = dataclasses.replace(
        config(tmp_path, synthetic),
        label_file_path=f'{training},{test}',
        validation_label_file=test,
    )
    monkeypatch.chdir(os.path.dirname(training))
    respelt = dataclasses.replace(
        saved, label_file_path='training.txt, ./test.txt', validation_label_file='../SYNTH/test.txt'
    )
    train_config.check_resume(respelt, saved)  # the same files, spelt otherwise: accepted
    train_config.check_resume(saved, respelt)
    reordered = dataclasses.replace(saved, label_file_path='test.txt,training.txt')
    with pytest.raises(errors.UserError) as error:
        train_config.check_resume(reordered, saved)
    assert str(error.value).startswith(
        f'--logdir={saved.logdir} was trained with other settings: '
        f'--label_file_path=test.txt,training.txt (saved: {training},{test}); '
    )


def test_a_resume_with_only_the_logdir_takes_the_saved_settings(tmp_path, synthetic):
    logdir = tmp_path / 'log'
    run(config(tmp_path, synthetic, max_iters=4, save_interval=2))
    result = run_here('train.py', f'--logdir={logdir}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'already trained to --max_iters=4' in result.stderr
    result = run_here('train.py', f'--logdir={logdir}', '--base_channels=16')
    assert result.returncode == 2
    assert last_line(result.stderr).startswith(
        f'error: --logdir={logdir} was trained with other settings: --base_channels=16 (saved: 8)'
    )
    (logdir / 'config.json').write_text('{"settings": ')
    before = sorted(os.listdir(logdir))
    result = run_here('train.py', f'--logdir={logdir}')
    assert result.returncode == 2
    assert last_line(result.stderr).startswith(f'error: {logdir}/config.json: not valid JSON (')
    assert sorted(os.listdir(logdir)) == before


def test_extending_an_interrupted_run_never_raises_the_learning_rate(tmp_path, synthetic):
    settings = config(tmp_path, synthetic, max_iters=20, save_interval=1000)
    with signal_at('step 10/20', signal.SIGTERM):
        assert run(settings).signal == signal.SIGTERM  # a pre-emption at step 10: saved, stopped
    assert checkpoint_step(settings.logdir) == 10
    run(dataclasses.replace(settings, max_iters=30))
    rates = scalars(settings.logdir, 'train/learning_rate')
    assert sorted(rates) == list(range(1, 31))
    # Logged at step t: the rate of the update that made it, schedule(t - 1).
    for step in range(1, 11):
        assert rates[step] == pytest.approx(3e-3 * (1 - (step - 1) / 20), rel=1e-5)
    at_stop = 3e-3 * (1 - 10 / 20)
    for step in range(11, 31):  # from the rate at the stop down to 0 at the new end, step 30
        assert rates[step] == pytest.approx(at_stop * (30 - (step - 1)) / 20, rel=1e-5)
    assert max(rates[step] for step in range(11, 31)) <= rates[10]
    assert json.load(open(tmp_path / 'log' / 'config.json'))['learning_rate_knots'] == [
        [0, 3e-3],
        [10, pytest.approx(at_stop)],
        [30, 0.0],
    ]


def test_validation_is_scored_like_evaluate_and_keeps_the_best_checkpoint(tmp_path, synthetic):
    settings = config(
        tmp_path,
        synthetic,
        max_iters=20,
        save_interval=10,
        validation_label_file=synthetic['test'],
        validation_interval=5,
    )
    run(settings)
    logdir = tmp_path / 'log'
    tags = ('validation/loss', 'validation/F1', 'validation/AUC_ROC')
    f1 = scalars(logdir, 'validation/F1', 'validation_logs')
    for tag in tags:
        assert sorted(scalars(logdir, tag, 'validation_logs')) == [5, 10, 15, 20], tag
    best = json.load(open(logdir / 'best' / 'best.json'))
    assert best['metric'] == 'F1' and best['value'] == pytest.approx(max(f1.values()), rel=1e-6)
    assert f1[best['step']] == pytest.approx(best['value'], rel=1e-6)
    assert os.path.exists(logdir / 'best' / 'model.weights.h5')
    # evaluate.py on the best checkpoint, at 0.5, reproduces the validation scores of its step.
    result = run_here(
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        '--checkpoint=best',
        '--nofeatures',
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name = f'SYNTH-test_best-step{best["step"]}_threshold0.5'
    metrics = json.load(open(os.path.join(evaluation_dir(logdir, name), 'metrics.json')))
    for key in ('F1', 'AUC_ROC', 'IoU', 'Se', 'Sp'):
        assert metrics['scores'][key] == pytest.approx(best['scores'][key], abs=1e-6), key


def test_evaluations_of_several_checkpoints_sit_side_by_side(tmp_path, synthetic):
    settings = config(tmp_path, synthetic, max_iters=20, save_interval=10)
    run(settings)
    logdir = tmp_path / 'log'
    evaluate = [
        'evaluate.py',
        f'--logdir={logdir}',
        f'--label_file_path={synthetic["test"]}',
        '--nofeatures',
    ]
    assert run_here(*evaluate).returncode == 0
    assert run_here(*evaluate, '--checkpoint=10', '--threshold=0.3').returncode == 0
    import inference

    with pytest.raises(errors.UserError) as error:
        inference.load_model(str(logdir), 'best')
    assert str(error.value) == (
        f'--checkpoint=best: {logdir} has no best checkpoint (train with '
        '--validation_label_file to keep one)'
    )
    with pytest.raises(errors.UserError) as error:
        inference.load_model(str(logdir), '7')
    assert str(error.value) == (
        f'--checkpoint=7: no such checkpoint in {logdir}/checkpoints (kept: 10, 20)'
    )
    names = sorted(os.listdir(logdir / 'evaluations'))
    assert names == ['SYNTH-test_step10_threshold0.3', 'SYNTH-test_step20_threshold0.5']
    scores = [
        json.load(open(logdir / 'evaluations' / name / 'metrics.json'))['scores']['AUC_ROC']
        for name in names
    ]
    assert scores[0] != scores[1]  # other weights, not a copy
    events = read_events(logdir, os.path.join('evaluations', names[0]))
    assert steps_of(events, 'eval/F1') == [10]


def test_validation_label_file_errors_are_one_line(tmp_path, synthetic):
    with pytest.raises(
        errors.UserError, match='^--validation_label_file=.*none.txt: file not found'
    ):
        run(config(tmp_path, synthetic, validation_label_file=str(tmp_path / 'none.txt')))
    header_only = tmp_path / 'empty.txt'
    header_only.write_text('test/images,test/labels,test/masks\n')
    with pytest.raises(errors.UserError, match='empty.txt: lists no images'):
        run(config(tmp_path, synthetic, validation_label_file=str(header_only)))
    assert not (tmp_path / 'log').exists()


def test_flag_defaults_are_the_settings_defaults():
    for field in dataclasses.fields(train_config.TrainConfig):
        if field.default is not dataclasses.MISSING:
            assert train_config.FLAGS[field.name].default == field.default, field.name


def test_tensorflow_start_up_noise_is_hidden_unless_asked_for(tmp_path):
    command = ['evaluate.py', f'--logdir={tmp_path}', '--label_file_path=x']
    quiet = run_script(*command)
    assert quiet.stderr.strip().splitlines() == [
        f'error: --logdir={tmp_path}: no trained model '
        '(architecture.json, model.weights.h5 and '
        'scale.json are written by train.py)'
    ]
    loud = run_script(*command, env={'RETINA_UNET_TF_LOGS': '1'})
    assert 'oneDNN' in loud.stderr or 'cuda' in loud.stderr.lower()


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger='absl')


def test_a_run_that_failed_before_its_first_checkpoint_binds_no_setting(tmp_path, synthetic):
    with pytest.raises(errors.UserError, match='the loss became nan'):
        run(config(tmp_path, synthetic, initial_lr=1e30, max_iters=6, save_interval=100))
    assert os.path.exists(tmp_path / 'log' / 'config.json')  # written before the first step
    settings = config(
        tmp_path, synthetic, initial_lr=3e-3, base_channels=4, max_iters=2, save_interval=2
    )
    run(settings)  # the corrected rerun trains: nothing was trained with the old settings
    assert json.load(open(tmp_path / 'log' / 'config.json'))['settings'] == dataclasses.asdict(
        settings
    )


def test_each_evaluate_flag_defaults_to_its_eval_config_field():
    """One default per setting: a flag of evaluate.py (its own or a shared one) and the field of
    EvalConfig it fills start from the same value."""
    import dataclasses

    import evaluate

    names = [field.name for field in dataclasses.fields(evaluate.EvalConfig)]
    flagged = [name for name in names if name in evaluate.FLAGS]
    assert len(flagged) == len(names) - 1  # every field but the architecture the user named
    for name in flagged:
        assert evaluate.FLAGS[name].default == getattr(evaluate.DEFAULT, name), name


def test_each_training_flag_defaults_to_its_train_config_field():
    """The shared flags (cli.py, which may not import TensorFlow's model) and train.py's own
    start from TrainConfig's defaults, which take the architecture's from model.py."""
    import dataclasses

    import train_config

    for field in dataclasses.fields(train_config.TrainConfig):
        default = train_config.FLAGS[field.name].default
        assert default == field.default or field.default is dataclasses.MISSING, field.name
