"""Deployments: load into slots, promote, roll back, undeploy; later strategies and gates."""
