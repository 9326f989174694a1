"""scoredyn.dynamics"""
