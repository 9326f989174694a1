"""scoredyn.train"""
