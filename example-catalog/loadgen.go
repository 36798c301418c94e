package main

import "fmt"

func runLoadgen(args []string) int {
	fmt.Println("loadgen: not yet")
	return 2
}
