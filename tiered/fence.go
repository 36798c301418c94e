package tiered

import "github.com/tiercache/tiercache/internal/fence"

// fencer is what a Cache asks of its fence (internal/fence): a test seam,
// which a test fills with a fence that lets every fill in, to show the
// races the fence closes.
type fencer interface {
	Ticket(key string, tags []string) fence.Ticket
	Valid(t fence.Ticket) bool
	TagsValid(tt []fence.TagTicket) bool
	Invalidate(key string)
	InvalidateTag(tag string)
	InvalidateAll()
}
