"""`posttrain data`: tools that read the rows a training stage reads and write them back, filtered
or with new columns, with a report (see `posttrain.datatools.stage`)."""
