"""The controller runtime: reflector, store, workqueue, leader election, metrics, manager."""
