/**
 * A FIFO of waiters with O(1) push, shift and removal of any element (a doubly linked
 * list). The pool's request queue needs removal from the middle when a waiter times out
 * or its client goes away, which an array makes O(n).
 */
export interface FifoNode<T> {
  value: T;
  prev: FifoNode<T> | null;
  next: FifoNode<T> | null;
  linked: boolean;
}

export class Fifo<T> {
  private head: FifoNode<T> | null = null;
  private tail: FifoNode<T> | null = null;
  private count = 0;

  get size(): number {
    return this.count;
  }

  push(value: T): FifoNode<T> {
    const node: FifoNode<T> = { value, prev: this.tail, next: null, linked: true };
    if (this.tail) this.tail.next = node;
    else this.head = node;
    this.tail = node;
    this.count++;
    return node;
  }

  shift(): T | undefined {
    const node = this.head;
    if (!node) return undefined;
    this.remove(node);
    return node.value;
  }

  remove(node: FifoNode<T>): boolean {
    if (!node.linked) return false;
    if (node.prev) node.prev.next = node.next;
    else this.head = node.next;
    if (node.next) node.next.prev = node.prev;
    else this.tail = node.prev;
    node.linked = false;
    node.prev = node.next = null;
    this.count--;
    return true;
  }

  *drain(): Generator<T> {
    for (let v = this.shift(); v !== undefined; v = this.shift()) yield v;
  }
}
