"""Small text files (class maps, CSVs) written by the tests."""


def write(path, text):
  path.write_text(text)
  return str(path)
