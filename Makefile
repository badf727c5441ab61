# `make demo`: set up .venv, generate a small dataset, train, evaluate, and
# write a submission. `make test`: the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo_run
# Few steps on a tiny set: small batches and a higher learning rate. Eval and
# inference read these from the checkpoints.
DEMO_HPARAMS := batch_size=16,lr=0.001
DEMO_STEPS := 200

.PHONY: demo test clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(PY) tools/make_demo_data.py --out_dir $(DEMO)/data
	$(PY) main.py --mode train --model mobilenet-v1 \
	    --class_map_path class_map.csv \
	    --train_clip_dir $(DEMO)/data/train_curated \
	    --train_csv_path $(DEMO)/data/train.csv \
	    --train_dir $(DEMO)/train_dir \
	    --hparams $(DEMO_HPARAMS) --max_steps $(DEMO_STEPS)
	$(PY) main.py --mode eval --model mobilenet-v1 \
	    --class_map_path class_map.csv \
	    --eval_clip_dir $(DEMO)/data/train_curated \
	    --eval_csv_path $(DEMO)/data/validation.csv \
	    --train_dir $(DEMO)/train_dir --eval_dir $(DEMO)/eval_dir
	$(PY) main.py --mode inference --model mobilenet-v1 \
	    --class_map_path class_map.csv \
	    --inference_clip_dir $(DEMO)/data/test \
	    --inference_checkpoint $(DEMO)/train_dir/model.ckpt-$(DEMO_STEPS) \
	    --predictions_csv_path $(DEMO)/submission.csv
	@echo "Validation lwlrap by checkpoint:"
	@for f in $(DEMO)/eval_dir/eval-*.txt; do \
	    echo "  $$f: $$(grep 'Overall lwlrap' $$f)"; done
	@echo "Submission: $(DEMO)/submission.csv"

test: $(VENV)/.installed
	$(PY) -m pytest -q tests -n 3 --dist worksteal --durations=15

clean:
	rm -rf $(DEMO) .pytest_cache
