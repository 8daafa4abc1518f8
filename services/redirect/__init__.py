"""The redirect service: zero-touch hand-over of factory-new devices to their Frontend."""
