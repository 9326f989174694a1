"""scoredyn.sample"""
