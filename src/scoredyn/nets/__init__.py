"""scoredyn.nets"""
