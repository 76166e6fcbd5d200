package overlay

func helperMain() bool { return false }
