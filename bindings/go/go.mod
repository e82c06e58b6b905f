module libmoe/bindings/go

go 1.19
