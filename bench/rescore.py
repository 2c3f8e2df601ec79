"""Re-measures shipped models' cards with the current code (after a change to how the FOV or the
scale is found): every evaluation row at its own threshold, then card.json and MODEL.md rewritten.

  python -m bench.rescore drive chase drive_chase
"""

import json
import os
import sys
import time

from bench.common import ROOT  # noqa: E402
from bench.ship import CARD, CARD_JSON, card_row, evaluate, render  # noqa: E402


def rescore(name):
    folder = os.path.join(ROOT, 'models', name)
    with open(os.path.join(folder, CARD_JSON)) as stream:
        card = json.load(stream)
    for index, row in enumerate(card['evaluations']):
        new = card_row(row['data'], evaluate(folder, row['data'], row['threshold']))
        print(
            f"{name} {row['data']} at {row['threshold']:.4f}: F1 {row['scores']['F1']:.4f} -> "
            f"{new['scores']['F1']:.4f}"
        )
        card['evaluations'][index] = new
    card['date'] = time.strftime('%Y-%m-%d')
    with open(os.path.join(folder, CARD_JSON), 'w') as stream:
        json.dump(card, stream, indent=2)
    with open(os.path.join(folder, CARD), 'w') as stream:
        stream.write(render(card))


if __name__ == '__main__':
    for model_name in sys.argv[1:]:
        rescore(model_name)
