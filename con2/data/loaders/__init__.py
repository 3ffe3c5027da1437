"""The data-set loaders behind con2.data.datasets.load_split, one module per source (medmnist, cifar, npz,
digits, folder), and the helpers they share (common). Import them through con2.data.datasets."""
