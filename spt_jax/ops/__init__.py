"""Small array operations shared by the model, the predictor and the evaluator."""
