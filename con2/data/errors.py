"""The errors of reading data: each message is one line naming the file or option at fault."""


class DataError(ValueError):
    """A data set cannot be loaded as asked; the message is one line saying why."""


class ImageChanged(DataError):
    """A file decodes to another size or channel count than its header said: not a file to skip."""


class MissingDependency(DataError):
    """A file con2 reads only with an optional package installed (pydicom, a DICOM decoder plugin):
    not a damaged file to skip, so --skip-bad-files does not drop it."""
