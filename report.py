"""The per-photo table of a set of vessel maps: features.csv and report.html, written together.

A row is a dict: 'image', 'source' ('predicted' or 'manual'), the features of features.measure
(absent where the photo could not be measured), 'flags' (what a user should see about the photo)
and 'thumbnail' (an image file relative to the output folder, or None).
"""

import dataclasses
import html
import os
import urllib.parse

import numpy as np

import features
import fileio
import fov
import scale

FEATURES_CSV, REPORT_HTML = 'features.csv', 'report.html'
FEW_VESSELS = 0.03  # a vessel density below this (DRIVE's maps: 0.08-0.14) is flagged
FAR_SCALE = 2.0  # a photo resized by more than this factor (or less than its inverse) is flagged
MANY_VESSELS = 0.25  # a vessel density above this (manual maps: 5-15%) is flagged as a flood


def photo_flags(
    mask: np.ndarray, measured: dict | None = None, decision: scale.Decision = scale.NATIVE
) -> list[str]:
    """What a user should see about one photo: its FOV touching the frame, the rule that set its
    scale where the FOV shows no disc, a resize far from the model's scale or a scale in doubt,
    very few vessels or far too many."""
    flags = []
    sides = fov.sides_touched(mask)
    if sides:
        where = 'on every side' if len(sides) == 4 else f"({', '.join(sides)})"
        flags.append(f'the FOV touches the frame {where}')
    if fov.diameter(mask) is None:
        flags.append(f'the FOV shows no disc: scale from {decision.rule}')
    factor = decision.factor
    if not 1 / FAR_SCALE <= factor <= FAR_SCALE:
        flags.append(f"resized x{factor:.2f} to the model's scale (far from the photo's own)")
    if decision.doubt:
        flags.append(f'scale in doubt: {decision.doubt}')
    density = measured['vessel_density'] if measured else None
    if density is not None and density < FEW_VESSELS:
        flags.append(f'few vessels found ({100 * density:.1f}% of the FOV)')
    if density is not None and density > MANY_VESSELS:
        flags.append(
            f'{100 * density:.0f}% of the FOV marked as vessel, far more than retinas show '
            f'(over {100 * MANY_VESSELS:.0f}%): the map is likely wrong'
        )
    return flags


@dataclasses.dataclass(frozen=True)
class Units:
    """What gives a map's features their physical scale: the photos' FOV diameter where the user
    gave it (else each photo's own), the camera's field angle across it, or the size of a pixel
    on the retina in micrometres."""

    photo_fov_diameter: float | None = None
    fov_degrees: float | None = None
    pixel_size_um: float | None = None


def row(image, source, vessels, inside, decision, units: Units | None):
    """The row of one vessel map: its features (measured in `units`; None: not measured) and
    flags, its photo brought to the model's scale as `decision` (scale.Decision) says."""
    measured = None
    if units:
        mm_per_px = features.mm_per_native_px(
            units.photo_fov_diameter or fov.diameter(inside), units.fov_degrees, units.pixel_size_um
        )
        measured = features.measure(
            vessels, inside, mm_per_native_px=mm_per_px, fov_diameter=units.photo_fov_diameter
        )
    return {
        'image': image,
        'source': source,
        **(measured or {}),
        'flags': photo_flags(inside, measured, decision),
    }


def publish(out_dir, rows, title):
    """Writes features.csv and report.html (write) and prints where."""
    csv_path, html_path = write(out_dir, rows, title)
    print(f'features: {csv_path}; report: {html_path}')


def unreadable(image: str, error: str) -> dict:
    """The row of a photo that could not be read or predicted."""
    return {
        'image': image,
        'flags': [f'could not be read or predicted: {error}'],
        'thumbnail': None,
    }


def columns(rows: list[dict]) -> list[str]:
    """The CSV's columns: features.COLUMNS, the millimetre columns where a row has them, flags."""
    physical = any('mm_per_px' in row for row in rows)
    return [*features.COLUMNS, *(features.MM_COLUMNS if physical else ()), 'flags']


def cell(value: object) -> str:
    """A value as the CSV and the report show it: 6 significant digits, '' for undefined, text
    as valid UTF-8."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ''
    if isinstance(value, float):
        return f'{value:.6g}'
    if isinstance(value, list):
        return fileio.printable('; '.join(value))
    return fileio.printable(str(value))


def write(out_dir: str, rows: list[dict], title: str) -> tuple[str, str]:
    """Writes features.csv and report.html for `rows` into out_dir; returns their paths."""
    names = columns(rows)
    paths = os.path.join(out_dir, FEATURES_CSV), os.path.join(out_dir, REPORT_HTML)
    fileio.write_csv(paths[0], names, ([cell(row.get(name)) for name in names] for row in rows))
    fileio.write_atomic(paths[1], page(rows, names, title))
    return paths


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; vertical-align: top; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }
td.text { text-align: left; max-width: 24em; }
td.flags { color: #a30; text-align: left; max-width: 24em; }
img { width: 200px; display: block; }
.missing { color: #a30; }
"""

_SCRIPT = r"""
document.querySelectorAll('img').forEach(function (img) {
  img.addEventListener('error', function () {
    var note = document.createElement('span');
    note.className = 'missing';
    note.textContent = 'image missing: ' +
      decodeURIComponent(img.getAttribute('src').replace(/^\.\//, ''));
    img.replaceWith(note);
  });
});
window.addEventListener('load', function () {
  var shown = Array.from(document.images).filter(function (img) {
    return img.complete && img.naturalWidth > 0; }).length;
  document.getElementById('summary').textContent =
    document.querySelectorAll('tbody tr').length + ' rows, ' + shown + ' images shown';
});
document.querySelectorAll('th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = document.querySelector('tbody');
    var rows = Array.from(body.rows);
    var ascending = th.dataset.order !== 'ascending';
    th.dataset.order = ascending ? 'ascending' : 'descending';
    rows.sort(function (a, b) {
      var x = a.cells[column].textContent, y = b.cells[column].textContent;
      var order = (x === '' || y === '' || isNaN(x) || isNaN(y)) ? x.localeCompare(y) : x - y;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def link(path: str) -> str:
    """A relative link to an output file, as an attribute value: percent-encoded from the name's
    bytes, so that no name can become a scheme (javascript:), a fragment or a query."""
    return html.escape('./' + urllib.parse.quote(os.fsencode(path), safe='/'))


def page(rows: list[dict], names: list[str], title: str) -> str:
    """The report: one table row per photo, the thumbnail first; opens from disk, no server."""
    shown = [name for name in names if name != 'flags']
    head = ''.join(f'<th>{html.escape(name)}</th>' for name in ['overlay', *shown, 'flags'])
    body = []
    for row in rows:
        thumbnail = row.get('thumbnail')
        image = (
            f'<a href="{link(thumbnail)}"><img src="{link(thumbnail)}" '
            f'alt="{html.escape(cell(row["image"]))}"></a>'
            if thumbnail
            else ''
        )
        cells = ''.join(
            f'<td{" class=text" if name in ("image", "source") else ""}>'
            f'{html.escape(cell(row.get(name)))}</td>'
            for name in shown
        )
        flags = '<br>'.join(html.escape(cell(flag)) for flag in row.get('flags', []))
        body.append(f'<tr><td>{image}</td>{cells}<td class=flags>{flags}</td></tr>')
    title = html.escape(cell(title))
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}'
        f'</title><style>{_STYLE}</style></head><body>\n<h1>{title}</h1>\n'
        f'<p>Features at a FOV diameter of {features.REFERENCE_FOV_PX} px (columns in '
        'docs/features.md); click a heading to sort. <span id="summary"></span></p>\n'
        f'<table><thead><tr>{head}</tr></thead><tbody>\n'
        + '\n'.join(body)
        + f'\n</tbody></table>\n<script>{_SCRIPT}</script>\n</body></html>\n'
    )
