# retina-unet: the usual jobs. Variables can be set on the command line:
#   make preprocess DATA=~/downloads      make train DATASET=CHASEDB LOGDIR=log/chase
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DATA ?= downloads
DATASET ?= DRIVE
LOGDIR ?= log/$(DATASET)
CPU_RECIPE = --flagfile=recipes/cpu.flags

.PHONY: help install preprocess train train_distribute tensorboard evaluate demo test journey lint \
	figures bench

help:
	@grep -E '^[a-z_]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create .venv and install requirements.txt
	python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt

preprocess:  ## DATA=folder with DRIVE/, CHASEDB1/, STARE/, HRF/ (any of them) -> data/
	$(PYTHON) preprocess.py --data_dir=$(DATA)

train:  ## train on DATASET with the CPU recipe into LOGDIR
	$(PYTHON) train.py --logdir=$(LOGDIR) --label_file_path=data/$(DATASET)/training.txt \
		$(CPU_RECIPE) --max_iters=4000

train_distribute:  ## the original's settings on every GPU of this machine
	$(PYTHON) train_distribute.py --logdir=$(LOGDIR) --label_file_path=data/$(DATASET)/training.txt \
		--batch_size=8 --max_iters=1000 --preprocess=True --transpose_conv=True

tensorboard:  ## serve LOGDIR's training, validation and evaluation curves
	$(PYTHON) -m tensorboard.main --logdir $(LOGDIR)

evaluate:  ## metrics, overlays and curves of LOGDIR on DATASET's test split
	$(PYTHON) evaluate.py --logdir=$(LOGDIR) --label_file_path=data/$(DATASET)/test.txt \
		--calibrate_on=data/$(DATASET)/training.txt --visulize=True

demo:  ## the whole job on the synthetic set: generate, preprocess, train 300 steps, evaluate
	$(PYTHON) preprocess.py --synthetic --data_dir=data/raw
	$(PYTHON) train.py --logdir=log/demo --label_file_path=data/SYNTH/training.txt \
		$(CPU_RECIPE) --max_iters=300 --save_interval=100 \
		--validation_label_file=data/SYNTH/test.txt
	$(PYTHON) evaluate.py --logdir=log/demo --label_file_path=data/SYNTH/test.txt \
		--calibrate_on=data/SYNTH/training.txt --visulize=True

lint:  ## ruff: the lint rules, then the formatting (ruff format to apply it)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: lint  ## lint, then the test suite (4-5 minutes on 2 idle cores)
	$(PYTHON) -m pytest -q -n 2 --dist worksteal -m "not slow"

journey:  ## the slow tests: the README's main command in a fresh copy, every shipped model's whole card
	$(PYTHON) -m pytest -q -n 2 --dist worksteal -m slow --durations=8

figures:  ## regenerate the README's figures in images/ (real data from ../shared/data)
	$(PYTHON) -m bench.figures

bench:  ## speed, then DRIVE accuracy (about 30 minutes on 2 cores) into bench/results/
	$(PYTHON) -m bench.throughput
	$(PYTHON) -m bench.accuracy drive
	$(PYTHON) -m bench.report
