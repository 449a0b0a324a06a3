"""From a trained model to a deployed detector: weights to load, the detection function that is
exported (images and original sizes in; labels, boxes, scores out), inputs to read, boxes to draw,
and the StableHLO / SavedModel / ONNX writers."""
