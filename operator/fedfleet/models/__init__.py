"""Models and their parameters: vector.Vector (the flat float32 parameter vector every floor passes around,
numpy only), nets (the torch classifiers devices train), params (between a torch model and its vector),
job_model (a job's model: initial weights, layout, the saved file) and evaluation (scoring a model).

Floor: the bottom one, with api/, persist/ and data/ (its saved model is written atomically). Only torch code
(nets, params, job_model, evaluation) imports
torch; the pure floors (engine, strategies, privacy, api) must not import them (a forbidden contract).
"""
