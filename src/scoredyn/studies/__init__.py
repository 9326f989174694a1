"""scoredyn.studies"""
