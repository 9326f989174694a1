"""scoredyn.data"""
