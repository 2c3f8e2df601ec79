"""What one photo costs, by size: the model alone, `evaluate.py --predict` per photo after
start-up (with and without the features, and with --scale_by=vessels), evaluation per image,
and peak memory (each run's own maximum RSS, from os.wait4). Photos: a DRIVE and a CHASE_DB1
image, an HRF photo (3504x2336) and that photo enlarged to 6000x4000; evaluation of 3 and 8
labelled images of each size (the large one: two HRF images enlarged), and of 5 and 40 HRF
images (copies of the 15 training images under other names). Model: models/drive_chase (the
README's model for photos, models/all, has its architecture and scale: the same work). Run by
bench/throughput.py (`python -m bench.throughput --photos_only`), which writes the figures under
"photos" in bench/results/throughput.json."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from bench.common import ROOT, SHARED, WORK

MODEL = os.path.join(ROOT, 'models', 'drive_chase')
PHOTOS = {
    'DRIVE_565x584': 'DRIVE/test/images/01_test.tif',
    'CHASE_DB1_999x960': 'CHASEDB1/Image_01L.jpg',
    'HRF_3504x2336': 'HRF/images/01_h.jpg',
}
LARGE = '6000x4000'
COPIES = 4  # photos per --predict run; the per-photo cost is the difference to one photo
LABELLED = {  # photo size: (data/ folder, split, enlarged to) of the images evaluated at it
    'DRIVE_565x584': ('DRIVE', 'test', None),
    'CHASE_DB1_999x960': ('CHASEDB', 'training', None),
    'HRF_3504x2336': ('HRF', 'training', None),
    LARGE: ('HRF', 'training', (6000, 4000)),
}
PER_IMAGE_COUNTS = (3, 8)  # evaluations at each size: seconds per image from their difference
FLAT_COUNTS = (5, 40)  # HRF-sized: the same peak whatever the number of images


def run_measured(*args):
    """(wall seconds, peak RSS in MiB, stderr) of one evaluate.py run, which must succeed."""
    with tempfile.TemporaryFile('w+') as errors:
        started = time.time()
        child = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'evaluate.py'), *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not all children's
        seconds = time.time() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        text = errors.read()
    if child.returncode:
        sys.exit(f'evaluate.py {" ".join(args)} failed:\n{text[-3000:]}')
    return seconds, usage.ru_maxrss / 1024, text


def logged_seconds(text):
    """The times of day (seconds) of absl's per-image progress lines ("[3/4] ...")."""
    times = []
    for line in text.splitlines():
        match = re.match(r'I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*\] \[\d+/\d+\] ', line)
        if match:
            hours, minutes, seconds = map(float, match.groups())
            times.append(3600 * hours + 60 * minutes + seconds)
    return times


def photo_folders():
    """{size name: a folder of COPIES copies of that photo} (the large one made from HRF's)."""
    folders = {}
    for name, relative in PHOTOS.items():
        folders[name] = copies(os.path.join(SHARED, relative), name)
    hrf = cv2.imread(os.path.join(SHARED, PHOTOS['HRF_3504x2336']))
    width, height = map(int, LARGE.split('x'))
    large = os.path.join(WORK, 'photo_cost', f'{LARGE}.jpg')
    cv2.imwrite(
        large,
        cv2.resize(hrf, (width, height), interpolation=cv2.INTER_LINEAR),
        [cv2.IMWRITE_JPEG_QUALITY, 95],
    )
    folders[LARGE] = copies(large, LARGE)
    return folders


def copies(path, name):
    folder = os.path.join(WORK, 'photo_cost', name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    extension = os.path.splitext(path)[1]
    for index in range(COPIES):
        os.symlink(os.path.abspath(path), os.path.join(folder, f'photo{index}{extension}'))
    return folder


def model_seconds(path):
    """The model alone on the photo brought to its scale (median of 3, after one warm-up)."""
    import fov
    import inference
    import model
    import run_folder
    import scale
    import utils

    unet, architecture, _, _ = inference.load_model(MODEL)
    predict = inference.make_predictor(unet, model.in_channels(architecture['preprocess']))
    rgb = utils.read_image(path)
    decision = scale.decide(fov.derive(rgb), run_folder.load_scale(MODEL), path)
    image = scale.at_model_scale(rgb, decision.factor, architecture['preprocess'])
    times = []
    for _ in range(4):
        started = time.perf_counter()
        inference.predict_image(predict, image)
        times.append(time.perf_counter() - started)
    return {'seconds': round(float(np.median(times[1:])), 3), 'input': list(image.shape[:2])}


def seconds_of_day(timestamp):
    local = time.localtime(timestamp)
    return 3600 * local.tm_hour + 60 * local.tm_min + local.tm_sec + timestamp % 1


def predict_costs(folder, *flags):
    """--predict on COPIES photos: seconds per photo after the first (from the progress lines),
    start-up (to the first photo's line, less one photo), peak MiB."""
    out = os.path.join(WORK, 'photo_cost', 'out')
    started = time.time()
    seconds, peak, text = run_measured(
        f'--logdir={MODEL}', f'--predict={folder}', f'--predict_dir={out}', *flags
    )
    times = logged_seconds(text)
    per_photo = (times[-1] - times[0]) / (len(times) - 1)
    first = times[0] - seconds_of_day(started)
    return {
        'seconds_per_photo': round(per_photo, 2),
        'start_up_seconds': round(first - per_photo, 1),
        'peak_mib': round(peak),
    }


def labelled_set(size, count):
    """A label file of `count` images of one photo size: LABELLED's images (enlarged copies of
    two of them for the large size), repeated under other names."""
    folder, split, enlarged = LABELLED[size]
    source = os.path.join(ROOT, 'data', folder, split)
    names = sorted(os.listdir(os.path.join(source, 'images')))
    if enlarged:
        source, names = enlarged_copies(source, names[:2], enlarged), names[:2]
    root = os.path.join(WORK, 'photo_cost', f'{size}_{count}')
    shutil.rmtree(root, ignore_errors=True)
    lines = ['images,labels,masks']
    for folder in ('images', 'labels', 'masks'):
        os.makedirs(os.path.join(root, folder))
    for index in range(count):
        name = names[index % len(names)]
        for folder in ('images', 'labels', 'masks'):
            os.symlink(
                os.path.join(source, folder, name),
                os.path.join(root, folder, f'{index:02d}_{name}'),
            )
        lines.append(','.join([f'{index:02d}_{name}'] * 3))
    path = os.path.join(root, 'list.txt')
    with open(path, 'w') as stream:
        stream.write('\n'.join(lines) + '\n')
    return path


def enlarged_copies(source, names, size):
    """The images, labels and masks `names` of `source` resized to `size` (width, height):
    images smoothly, labels and masks by nearest neighbour. Returns their folder."""
    target = os.path.join(WORK, 'photo_cost', f'enlarged_{size[0]}x{size[1]}')
    for folder, interpolation in (
        ('images', cv2.INTER_LINEAR),
        ('labels', cv2.INTER_NEAREST),
        ('masks', cv2.INTER_NEAREST),
    ):
        os.makedirs(os.path.join(target, folder), exist_ok=True)
        for name in names:
            image = cv2.imread(os.path.join(source, folder, name), cv2.IMREAD_UNCHANGED)
            resized = cv2.resize(image, size, interpolation=interpolation)
            cv2.imwrite(os.path.join(target, folder, name), resized)
    return target


def evaluation_costs(size, counts):
    """evaluate.py (features on, no overlays) on two numbers of images of one size: wall seconds
    and peak MiB of each, and the seconds per image between them."""
    runs = {}
    for count in counts:
        output = os.path.join(WORK, 'photo_cost', f'eval_{size}_{count}')
        shutil.rmtree(output, ignore_errors=True)
        seconds, peak, _ = run_measured(
            f'--logdir={MODEL}',
            f'--label_file_path={labelled_set(size, count)}',
            f'--output_dir={output}',
        )
        runs[f'{count}_images'] = {'seconds': round(seconds, 1), 'peak_mib': round(peak)}
    (low, fewer), (high, more) = zip(counts, runs.values(), strict=True)
    per_image = (more['seconds'] - fewer['seconds']) / (high - low)
    return {**runs, 'seconds_per_image': round(per_image, 2)}


def measure():
    """The figures of every photo size, and of evaluation at HRF's size for FLAT_COUNTS images."""
    for folder, split, _ in LABELLED.values():
        if not os.path.isdir(os.path.join(ROOT, 'data', folder, split)):
            sys.exit(f'data/{folder} is missing: run preprocess.py --data_dir=../shared/data first')
    started = time.time()
    subprocess.run([sys.executable, '-c', 'import tensorflow'], check=True)
    tensorflow_import = time.time() - started
    record = {
        'model': os.path.relpath(MODEL, ROOT),
        'copies_per_run': COPIES,
        'tensorflow_import_seconds': round(tensorflow_import, 1),
        'sizes': {},
    }
    for name, folder in photo_folders().items():
        photo = os.path.join(folder, sorted(os.listdir(folder))[0])
        record['sizes'][name] = {
            'model_alone': model_seconds(photo),
            'predict': predict_costs(folder),
            'predict_nofeatures': predict_costs(folder, '--nofeatures'),
            'predict_scale_by_vessels': predict_costs(folder, '--scale_by=vessels'),
            'evaluation': evaluation_costs(name, PER_IMAGE_COUNTS),
        }
        print(name, record['sizes'][name], flush=True)
    record['evaluation_HRF'] = evaluation_costs('HRF_3504x2336', FLAT_COUNTS)
    print('evaluation', record['evaluation_HRF'], flush=True)
    return record
