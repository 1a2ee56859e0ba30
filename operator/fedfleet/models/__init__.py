"""Models and their parameters: vector.Vector (the flat float32 parameter vector every floor passes around,
numpy only), nets (the torch classifiers devices train) and params (between a torch model and its vector).

Floor: the bottom one, beside api/, persist/ and data/, which it never imports. Only nets and params import
torch; the pure floors (engine, strategies, privacy, api) must not import them (a forbidden contract).
"""
