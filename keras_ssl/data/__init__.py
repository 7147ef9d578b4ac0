"""Input pipelines: folders of images as ``keras.utils.PyDataset`` objects."""

from keras_ssl.data.image_folder import DEFAULT_EXTENSIONS, ImageFolderDataset, image_folder

__all__ = ["DEFAULT_EXTENSIONS", "ImageFolderDataset", "image_folder"]
