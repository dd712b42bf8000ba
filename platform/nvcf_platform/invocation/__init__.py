"""invocation"""
