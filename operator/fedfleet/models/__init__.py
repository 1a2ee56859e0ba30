"""Models and their parameters: vector.Vector (the flat float32 parameter vector every floor passes around,
numpy only), nets (the torch classifiers devices train), params (between a torch model and its vector),
job_model (a job's model: initial weights, layout, the saved file), evaluation (scoring a model), artifact (the
published model format and its signed release record, numpy only), canonical (the one spelling of JSON, base64
and times in that format) and artifact_torch (a saved model.pt to an artifact, an artifact to a module).

Floor: the bottom one, with api/, persist/ and data/ (its saved model is written atomically). Only torch code
(nets, params, job_model, evaluation, artifact_torch) imports torch; the pure floors (engine, strategies, privacy,
api) must not import them (a forbidden contract).
"""
