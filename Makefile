# Two entry points (see README): `make demo` and `make test`. Both create/use .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

# torch/torchvision first and pinned: the only pair that installs on the project machines.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,timm]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/rscompress demo --out demo-out

# Two workers: the tests run one torch thread each, the machines have 2 cores.
# pytest's exit 5 (no tests collected) is a broken suite, not a pass: say so and fail.
# Lint, format and type check first (ruff, then mypy on src/; both configured in pyproject.toml):
# under a minute, and a failure says where.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts
	$(BIN)/mypy
	@$(BIN)/python -m pytest -q -n 2; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing or a filter hides every test" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) demo-out
