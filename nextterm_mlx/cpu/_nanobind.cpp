// nanobind's runtime, from the nanobind that pyproject.toml's build
// requirements bring. It is included here rather than named in setup.py
// because setuptools rejects sources outside the project (an absolute path
// passes only by accident, when it contains the word "build").
#include <nb_combined.cpp>
