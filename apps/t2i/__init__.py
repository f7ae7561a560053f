# the best shipped shapes checkpoint on GenEval-lite (README, issue 19): the default of the CLI
# (omniar t2i / caption), the HTTP API and the Images app
DEFAULT_CHECKPOINT = "assets/t2i-shapes-layout"
