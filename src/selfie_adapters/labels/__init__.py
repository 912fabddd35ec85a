"""Labels in other tools' formats: Neuronpedia explanation exports and delphi explanation folders."""
