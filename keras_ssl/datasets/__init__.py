"""Small built-in data sets (NumPy arrays, no download).

- ``keras_ssl.datasets.fashion_mnist``: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017,
  Zalando Research, MIT licence), with a class-stratified subset shipped in the package.
"""

from keras_ssl.datasets import fashion_mnist

__all__ = ["fashion_mnist"]
