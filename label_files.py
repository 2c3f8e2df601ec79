"""Label files: the lines preprocess.py writes and every script reads (image, label, FOV mask),
and the output names derived from them."""

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import errors

# A label file's first line names the image, label and mask folders relative to the file; every
# other line is `image,label,mask` file names. preprocess.py also writes the preprocessed images
# to the image folder + '_pre' for viewing; a second observer's labels, where there are some, lie
# in the label folder + '_2nd'.

PREPROCESSED_SUFFIX = '_pre'
SECOND_OBSERVER_SUFFIX = '_2nd'


def check_listable(name: str, source: str) -> None:
    """Refuses a file name that a label file cannot hold (its separators: comma, line break)."""
    if any(character in name for character in ',\n\r'):
        raise errors.UserError(
            f'{source}: a comma or line break in a file name cannot be listed in a '
            'label file; rename the file'
        )


def label_file_text(folders: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """The text of a label file: `folders` (image, label, mask) and one row of names per image."""
    for row in rows:
        for name in row:
            check_listable(name, name)
    return '\n'.join(','.join(fields) for fields in [folders, *rows]) + '\n'


@dataclass(frozen=True)
class Sample:
    name: str
    image: str
    label: str
    mask: str


def parse_label_file(path: str, flag: str = '--label_file_path') -> list[Sample]:
    """The samples a label file lists, with absolute paths; a UserError names file and line (or
    the flag that named a missing file)."""
    if not os.path.isfile(path):
        raise errors.UserError(f'{flag}={path}: file not found')
    with open(path, encoding='utf-8-sig', errors='replace') as stream:  # -sig: a BOM is dropped
        lines = [(number, line.strip()) for number, line in enumerate(stream, 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise errors.UserError(f'{path}: empty label file')
    root = os.path.dirname(os.path.abspath(path))
    folders = [field.strip() for field in lines[0][1].split(',')]
    if len(folders) != 3 or not all(folders):
        raise errors.UserError(
            f'{path}:{lines[0][0]}: expected the folders "images,labels,masks",'
            f' found "{lines[0][1]}"'
        )
    folders = [os.path.join(root, folder) for folder in folders]
    samples = []
    for number, line in lines[1:]:
        names = [field.strip() for field in line.split(',')]
        if len(names) != 3 or not all(names):
            raise errors.UserError(f'{path}:{number}: expected "image,label,mask", found "{line}"')
        paths = [os.path.join(folder, name) for folder, name in zip(folders, names, strict=True)]
        for file in paths:
            if not os.path.isfile(file):
                raise errors.UserError(f'{path}:{number}: listed file {file} not found')
        samples.append(paths)
    if not samples:
        raise errors.UserError(f'{path}: lists no images')
    stems = output_stems([paths[0] for paths in samples], path)
    return [Sample(stems[paths[0]], *paths) for paths in samples]


def samples_of(paths: str, flag: str = '--label_file_path') -> list[Sample]:
    """The samples of one label file or of a comma-separated list of them, in order."""
    return [sample for path in paths_of(paths) for sample in parse_label_file(path, flag)]


def paths_of(paths: str) -> list[str]:
    """The label files of a comma-separated list (one file is a list of one)."""
    return [path.strip() for path in paths.split(',')]


def file_stem(path: str) -> str:
    """A file's name without its extension, a gzipped one's too: im0001.ppm.gz -> im0001."""
    return os.path.splitext(os.path.basename(path).removesuffix('.gz'))[0]


def output_stems(paths: Sequence[str], source: str) -> dict[str, str]:
    """{path: the stem its outputs are named from}: the file's own stem, never a folder, or its
    whole name where two inputs share a stem (eye.png and eye.jpg); inputs whose outputs would
    still collide (the same name in two folders, a file listed twice) are refused."""
    stems = [file_stem(path) for path in paths]
    names = [
        os.path.basename(path) if stems.count(stem) > 1 else stem
        for path, stem in zip(paths, stems, strict=True)
    ]
    for name in set(names):
        same = [path for path, other in zip(paths, names, strict=True) if other == name]
        if len(same) > 1:
            raise errors.UserError(
                f'{source}: {same[0]} and {same[1]} would write the same outputs; '
                'list each image once, under names of their own'
            )
    return dict(zip(paths, names, strict=True))


def second_observer_path(sample: Sample) -> str | None:
    """labels/X.png -> labels_2nd/X.png, where preprocess.py puts the second observer's labels;
    None where there is no such file."""
    folder, name = os.path.split(sample.label)
    path = os.path.join(folder + SECOND_OBSERVER_SUFFIX, name)
    return path if os.path.exists(path) else None
