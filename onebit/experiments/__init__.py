"""The experiments side: config files, runs, the grid that compare and sensitivity share, reports,
plots, records and benchmarks. It builds on the training core and the deployment bridges; nothing
below it imports it."""
